"""Domain model of workflow_svc: agents, workflow versions, audit entries and health probes."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final


class AuthType(enum.StrEnum):
    """How FlowForge authenticates to an agent."""

    NONE = "none"
    BEARER = "bearer"
    APIKEY = "apikey"


DEFAULT_APIKEY_HEADER: Final = "X-API-Key"
"""Header of an `apikey` agent's key when its `auth_config` names none."""


class AgentStatus(enum.StrEnum):
    """Whether workflows may use an agent."""

    ACTIVE = "active"
    INACTIVE = "inactive"


DEFAULT_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class RetryConfig:
    """Default retry policy of the steps that call an agent."""

    max_retries: int = 3
    initial_delay_ms: int = 1_000
    max_delay_ms: int = 30_000
    backoff_multiplier: float = 2.0


@dataclass(frozen=True)
class AgentSpec:
    """Everything a client may write about an agent except its credentials, defaults applied.

    Credentials (`auth_config`) travel beside the spec, never inside it, so that a spec can be
    logged, compared and returned without any risk of carrying a secret."""

    name: str = ""
    url: str = ""
    description: str = ""
    health_url: str = ""
    """Empty means `url + "/health"`; kept empty so that it follows later changes of `url`."""
    auth_type: AuthType = AuthType.NONE
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    retry_config: RetryConfig = field(default_factory=RetryConfig)
    capabilities: tuple[str, ...] = ()
    status: AgentStatus = AgentStatus.ACTIVE


# Paths a client may name in an update mask: the spec's fields, one level into `retry_config`,
# and `auth_config` for the credentials.
SPEC_FIELDS = frozenset(spec_field.name for spec_field in fields(AgentSpec))
RETRY_CONFIG_FIELDS = frozenset(retry_field.name for retry_field in fields(RetryConfig))
CREDENTIALS_FIELD = "auth_config"
OUTPUT_ONLY_FIELDS = frozenset({"id", "etag", "has_credentials", "created_at", "updated_at", "created_by"})


@dataclass(frozen=True)
class Agent:
    """A registered agent as stored. Credentials are only ever held sealed (encrypted)."""

    id: str
    tenant_id: str
    spec: AgentSpec
    sealed_auth_config: str | None = field(repr=False)
    etag: str
    created_at: dt.datetime
    updated_at: dt.datetime
    created_by: str

    @property
    def has_credentials(self) -> bool:
        """True when credentials are stored."""
        return self.sealed_auth_config is not None


@dataclass(frozen=True)
class AgentFilter:
    """Which agents a listing returns; None means no condition."""

    status: AgentStatus | None = None
    capability: str | None = None
    name_prefix: str | None = None


@dataclass(frozen=True)
class AgentPage:
    """One page of a listing, newest first, and the cursor of the next (None on the last)."""

    agents: list[Agent]
    next_cursor: str | None


class WorkflowStatus(enum.StrEnum):
    """Lifecycle of a workflow definition."""

    ACTIVE = "active"
    ARCHIVED = "archived"


DEFINITION_FIELDS = ("name", "description", "input_schema", "steps", "output", "tags")
"""The fields of a Workflow that a version's definition snapshot holds; the others (`id`,
`version`, `status`, `etag`, timestamps, `created_by`) are bookkeeping kept beside it."""


@dataclass(frozen=True)
class Workflow:
    """One immutable version of a workflow as stored."""

    id: str
    tenant_id: str
    version: int
    status: WorkflowStatus
    definition: Mapping[str, Any]
    """The snapshot: the Workflow JSON of API.md restricted to DEFINITION_FIELDS, with proto
    field names and lower-case enum values (`"type": "http"`)."""
    etag: str
    created_at: dt.datetime
    """When the workflow (version 1) was created."""
    updated_at: dt.datetime
    """When this version was saved."""
    created_by: str
    """Subject that created the workflow."""

    @property
    def name(self) -> str:
        """The workflow's name at this version."""
        return str(self.definition.get("name", ""))


class WorkflowOrder(enum.Enum):
    """The orders a workflow listing supports, spelled as `order_by` takes them."""

    CREATED_DESC = "created_at desc"
    CREATED_ASC = "created_at asc"
    NAME_ASC = "name asc"
    NAME_DESC = "name desc"
    UPDATED_DESC = "updated_at desc"

    @property
    def field(self) -> str:
        """The column sorted on (ties are broken by id in the same direction)."""
        return self.value.split()[0]

    @property
    def descending(self) -> bool:
        """True for newest/last first."""
        return self.value.endswith(" desc")


SortValue = str | dt.datetime
"""The value of a listing's sort column: a name or a timestamp."""


@dataclass(frozen=True)
class WorkflowCursor:
    """Where a workflow listing resumes: strictly after (sort value, id) in `order`."""

    order: WorkflowOrder
    value: SortValue
    id: str


@dataclass(frozen=True)
class WorkflowFilter:
    """Which workflows a listing returns; None means no condition."""

    status: WorkflowStatus | None = None
    name_prefix: str | None = None
    tag: str | None = None


@dataclass(frozen=True)
class WorkflowPage:
    """One page of a workflow listing and the cursor of the next (None on the last)."""

    workflows: list[Workflow]
    next_cursor: WorkflowCursor | None


@dataclass(frozen=True)
class VersionPage:
    """One page of a workflow's versions, newest first; `next_before` is the version the next
    page starts below (None on the last)."""

    versions: list[Workflow]
    next_before: int | None


@dataclass(frozen=True)
class AuditEntry:
    """One audited change, written in the same transaction as the change itself."""

    id: str
    tenant_id: str
    actor: str
    action: str
    """`<entity_type>.<created|updated|deleted>`, e.g. `agent.created`."""
    entity_type: str
    entity_id: str
    change: Mapping[str, Any]
    """`{"before": {...}, "after": {...}}` restricted to the fields that changed, secrets masked."""
    created_at: dt.datetime


@dataclass(frozen=True)
class AuditQuery:
    """A page request over the tenant's audit entries, newest first."""

    limit: int
    before_created_at: dt.datetime | None = None
    before_id: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    actor: str | None = None


@dataclass(frozen=True)
class HealthProbe:
    """The outcome of one probe of an agent's health endpoint."""

    healthy: bool
    latency_ms: int
    checked_at: dt.datetime
    detail: str
    """The status line when the agent answered, otherwise why the probe failed."""


class CircuitState(enum.StrEnum):
    """An agent's circuit breaker in the execution engine."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class AgentCallStats:
    """What the execution engine reports about its calls to an agent."""

    circuit: CircuitState
    in_flight: int
    recent_calls: int
    recent_success_rate: float
    p50_latency_ms: int


@dataclass(frozen=True)
class AgentRuntimeStatus:
    """An agent's status, with the engine's view of its calls when the engine answered.

    Success rate and median latency come from the engine's recent calls when there were any,
    else from the recent health probes (0 when neither exists)."""

    status: AgentStatus
    recent_success_rate: float
    p50_latency_ms: int
    in_flight: int = 0
    circuit: CircuitState | None = None
    """None when the execution engine could not be asked."""
