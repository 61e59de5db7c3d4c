"""deploy/ cannot run here (no Docker engine), so its files are checked for consistency with
the code: every module, port, probe and environment variable they name must exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from auth_svc.settings import AuthSettings
from edge.settings import EdgeSettings
from execution_svc.settings import ExecutionSettings
from workflow_svc.settings import WorkflowSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETTINGS: list[type[BaseSettings]] = [AuthSettings, WorkflowSettings, ExecutionSettings, EdgeSettings]
EXTERNAL_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT", "PYTHONUNBUFFERED"}


def _env_names(settings: type[BaseSettings]) -> set[str]:
    prefix = settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, field in settings.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias] if isinstance(alias, str) else [])
        names.update(str(choice).upper() for choice in choices)
    return names


KNOWN_ENV = set().union(*(_env_names(s) for s in SETTINGS)) | EXTERNAL_ENV


def _k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


def _module_runs(command: list[str]) -> None:
    assert command[:2] == ["python", "-m"], command
    module = importlib.import_module(command[2])
    assert (Path(module.__file__ or "").parent / "__main__.py").exists(), f"{command[2]} has no __main__"


def test_dockerfile_copies_existing_paths_and_runs_a_real_module() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(.+?) \S+$", dockerfile, flags=re.M):
        for part in source.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, flags=re.M)
    assert cmd is not None
    _module_runs(yaml.safe_load(cmd.group(1)))


def test_compose_runs_every_process_with_known_settings() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "auth", "workflow", "execution", "edge", "otel-collector"} <= set(services)
    for name in ("auth", "workflow", "execution", "edge"):
        _module_runs(services[name]["command"])
        for variable in services[name]["environment"]:
            assert variable in KNOWN_ENV | {"DATABASE_URL", "REDIS_URL"}, f"{name}: unknown setting {variable}"
    assert (DEPLOY / "otel-collector.yaml").exists()


@pytest.mark.parametrize("component", ["auth", "workflow", "execution", "edge"])
def test_kubernetes_deployment_and_service_agree(component: str) -> None:
    docs = [d for d in _k8s_documents() if d["metadata"]["name"] == f"flowforge-{component}"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    _module_runs(container["command"])
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    for variable in container["env"]:
        assert variable["name"] in KNOWN_ENV | {"DATABASE_URL", "REDIS_URL"}, variable["name"]
    main_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "main")
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert any(value == str(main_port) for name, value in env.items() if name.endswith("_PORT"))
    # Prometheus scrapes a port that serves metrics: the edge's own `/metrics`, a service's metrics port.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    scraped = int(annotations["prometheus.io/port"])
    if component == "edge":
        assert (scraped, annotations["prometheus.io/path"]) == (main_port, "/metrics")
    else:
        assert env[f"FLOWFORGE_{component.upper()}_METRICS_PORT"] == str(scraped)
        assert scraped in {p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        spec = container[probe]
        if component == "edge":
            assert spec["httpGet"]["path"] in {"/health", "/health/ready"}
        else:
            assert spec["grpc"]["port"] == main_port


def test_autoscalers_target_existing_deployments() -> None:
    deployments = {d["metadata"]["name"] for d in _k8s_documents() if d["kind"] == "Deployment"}
    scalers = [d for d in _k8s_documents() if d["kind"] == "HorizontalPodAutoscaler"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scalers} <= deployments
    assert any(s["spec"]["scaleTargetRef"]["name"] == "flowforge-execution" for s in scalers)


def test_every_secret_a_deployment_reads_is_in_the_example_secret() -> None:
    example = next(d for d in _k8s_documents() if d["kind"] == "Secret")
    provided = set(example["stringData"])
    wanted = {
        variable["valueFrom"]["secretKeyRef"]["key"]
        for d in _k8s_documents()
        if d["kind"] == "Deployment"
        for variable in d["spec"]["template"]["spec"]["containers"][0]["env"]
        if "valueFrom" in variable
    }
    assert wanted <= provided, f"missing from secret.example.yaml: {sorted(wanted - provided)}"
    # Per-account login limits count across edge replicas only with one shared key.
    edge = next(d for d in _k8s_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "flowforge-edge")
    names = {v["name"] for v in edge["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "FLOWFORGE_RATE_LIMIT_KEY_SECRET" in names
