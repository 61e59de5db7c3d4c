"""Reads each RPC's `flowforge.options.v1.policy` from the proto descriptors."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor

from flowforge.options.v1 import annotations_pb2

MethodPolicy = annotations_pb2.MethodPolicy


def method_policy(method: MethodDescriptor) -> MethodPolicy | None:
    """The declared policy of one RPC, or None when it declares none."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.policy):
        return None
    return options.Extensions[annotations_pb2.policy]


def services_of(files: Iterable[FileDescriptor]) -> list[ServiceDescriptor]:
    """Every service declared in the given proto files."""
    return [service for file in files for service in file.services_by_name.values()]


def policy_table(services: Iterable[ServiceDescriptor]) -> dict[str, MethodPolicy | None]:
    """Maps `/package.Service/Method` to its policy (None: undeclared, which is refused)."""
    return {
        f"/{service.full_name}/{method.name}": method_policy(method)
        for service in services
        for method in service.methods
    }
