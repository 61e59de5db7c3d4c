"""Per-agent protection for calls from this process: a circuit breaker and a concurrency cap.

A breaker opens after `failure_threshold` consecutive failures that blame the agent (5xx,
429, timeouts, connection errors), answers "circuit open" without calling for `open_seconds`,
then lets one trial call through (half open): its success closes the circuit, its failure
opens it again. Failures that blame the request (4xx) or FlowForge (policy refusals) do not
count. Steps refused by an open circuit are retryable after the remaining open time, so the
step's own retry policy decides how long a run waits for the agent to recover.

State is per process (each execution_svc replica judges from the calls it makes), as in the
usual breaker libraries: no shared round trip on the hot path.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

AgentKey = tuple[str, str]
"""(tenant id, agent name)."""

LATENCY_WINDOW: Final = 100
"""Recent calls kept per agent for the success rate and the median latency."""


class CircuitState(enum.StrEnum):
    """The breaker's state, as `GET /agents/{id}/status` names it."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class GuardConfig:
    """Breaker thresholds and the per-agent cap on calls in flight from this process."""

    failure_threshold: int = 5
    open_seconds: float = 30.0
    max_in_flight_per_agent: int = 64


@dataclass(frozen=True)
class AgentRuntime:
    """What this process knows about one agent right now."""

    circuit: CircuitState
    in_flight: int
    recent_calls: int
    recent_success_rate: float
    p50_latency_ms: int


@dataclass
class _Breaker:
    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False
    in_flight: int = 0
    recent: deque[tuple[bool, float]] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


class CircuitOpenError(Exception):
    """The agent's circuit is open: the call was not made."""

    def __init__(self, retry_after_seconds: float) -> None:
        super().__init__(f"the agent's circuit is open for {retry_after_seconds:.1f} s more")
        self.retry_after_seconds = retry_after_seconds


class AgentGuard:
    """Breakers and concurrency caps by agent; `clock` is monotonic seconds."""

    def __init__(self, config: GuardConfig | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config or GuardConfig()
        self._clock = clock
        self._breakers: dict[AgentKey, _Breaker] = {}
        self._slots: dict[AgentKey, asyncio.Semaphore] = {}

    def admit(self, key: AgentKey) -> None:
        """Reserves the right to call the agent now; CircuitOpenError when the circuit forbids
        it. Every admitted call must end with `record`."""
        breaker = self._breakers.setdefault(key, _Breaker())
        if breaker.state is CircuitState.OPEN:
            remaining = breaker.opened_at + self._config.open_seconds - self._clock()
            if remaining > 0:
                raise CircuitOpenError(remaining)
            breaker.state = CircuitState.HALF_OPEN
        if breaker.state is CircuitState.HALF_OPEN:
            if breaker.trial_in_flight:
                raise CircuitOpenError(self._config.open_seconds / 10)
            breaker.trial_in_flight = True
        breaker.in_flight += 1

    def record(self, key: AgentKey, *, success: bool, blames_agent: bool, seconds: float) -> None:
        """The outcome of an admitted call. Only failures that `blame_agent` move the breaker."""
        breaker = self._breakers[key]
        breaker.in_flight -= 1
        breaker.recent.append((success, seconds))
        trial = breaker.state is CircuitState.HALF_OPEN and breaker.trial_in_flight
        if trial:
            breaker.trial_in_flight = False
        if success or not blames_agent:
            if success:
                breaker.consecutive_failures = 0
                if trial:
                    breaker.state = CircuitState.CLOSED
            return
        breaker.consecutive_failures += 1
        if trial or breaker.consecutive_failures >= self._config.failure_threshold:
            breaker.state = CircuitState.OPEN
            breaker.opened_at = self._clock()

    def slots(self, key: AgentKey) -> asyncio.Semaphore:
        """The semaphore capping this process's calls in flight to the agent."""
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self._config.max_in_flight_per_agent)
        return slots

    def runtime(self, key: AgentKey) -> AgentRuntime:
        """The agent's circuit, load, recent success rate and median latency (zeros before any call)."""
        breaker = self._breakers.get(key) or _Breaker()
        state = breaker.state
        if state is CircuitState.OPEN and self._clock() >= breaker.opened_at + self._config.open_seconds:
            state = CircuitState.HALF_OPEN  # the next call is the trial
        recent = list(breaker.recent)
        successes = sum(1 for ok, _ in recent if ok)
        latencies = sorted(seconds for _, seconds in recent)
        median = latencies[len(latencies) // 2] if latencies else 0.0
        return AgentRuntime(
            circuit=state,
            in_flight=breaker.in_flight,
            recent_calls=len(recent),
            recent_success_rate=successes / len(recent) if recent else 0.0,
            p50_latency_ms=round(median * 1000),
        )
