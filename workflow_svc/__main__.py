"""`python -m workflow_svc`: serves AgentService and WorkflowService until SIGTERM."""

from flowforge_common.service import run
from workflow_svc.server import create_server
from workflow_svc.settings import WorkflowSettings

if __name__ == "__main__":
    run(create_server, WorkflowSettings())
