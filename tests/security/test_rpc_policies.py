"""Every RPC declares who may call it, in the proto, so a new RPC cannot ship unguarded."""

from __future__ import annotations

from flowforge.audit.v1 import audit_service_pb2
from flowforge.auth.v1 import auth_service_pb2
from flowforge.execution.v1 import execution_service_pb2
from flowforge.workflow.v1 import agent_service_pb2, workflow_service_pb2
from flowforge_common.auth import ALL_SCOPES, INTERNAL_SCOPE
from flowforge_common.policy import method_policy, services_of

FILES = [audit_service_pb2, auth_service_pb2, agent_service_pb2, workflow_service_pb2, execution_service_pb2]
PUBLIC_RPCS = {
    "flowforge.auth.v1.AuthService.Signup",
    "flowforge.auth.v1.AuthService.Login",
    "flowforge.auth.v1.AuthService.Refresh",
    "flowforge.auth.v1.AuthService.Logout",
    "flowforge.auth.v1.AuthService.IssueToken",
    "flowforge.auth.v1.AuthService.GetJwks",
    "flowforge.auth.v1.AuthService.VerifyApiKey",
    "flowforge.execution.v1.ExecutionService.ReceiveHook",
}


def all_methods() -> list[tuple[str, object]]:
    return [
        (method.full_name, method_policy(method))
        for service in services_of(module.DESCRIPTOR for module in FILES)
        for method in service.methods
    ]


def test_every_rpc_declares_exactly_one_kind_of_access() -> None:
    methods = all_methods()
    assert len(methods) > 40
    for name, policy in methods:
        assert policy is not None, f"{name} declares no flowforge.options.v1.policy"
        kinds = [bool(policy.public), bool(policy.authenticated), bool(policy.scope)]  # type: ignore[attr-defined]
        assert sum(kinds) == 1, f"{name}: exactly one of public/authenticated/scope"
        if policy.scope:  # type: ignore[attr-defined]
            known = (*ALL_SCOPES, INTERNAL_SCOPE)
            assert policy.scope in known, f"{name}: unknown scope {policy.scope}"  # type: ignore[attr-defined]


def test_only_the_known_entry_points_are_public() -> None:
    public = {name for name, policy in all_methods() if policy.public}  # type: ignore[attr-defined]
    assert public == PUBLIC_RPCS


def test_success_codes_are_the_contracts() -> None:
    for name, policy in all_methods():
        code = policy.success_code or 200  # type: ignore[attr-defined]
        assert code in {200, 201, 202, 204}, name
        rpc = name.rsplit(".", 1)[1]
        if rpc.startswith("Delete"):
            assert code == 204, name
        if rpc.startswith("Create") or rpc == "Signup":
            assert code == 201, name
