"""`python -m auth_svc`: serves AuthService until SIGTERM."""

from auth_svc.server import create_server
from auth_svc.settings import AuthSettings
from flowforge_common.service import run

if __name__ == "__main__":
    run(create_server, AuthSettings())
