"""`python -m execution_svc`: serves ExecutionService until SIGTERM."""

from execution_svc.server import create_server
from execution_svc.settings import ExecutionSettings
from flowforge_common.service import run

if __name__ == "__main__":
    run(create_server, ExecutionSettings())
