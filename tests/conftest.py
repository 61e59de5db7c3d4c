"""Shared fixtures: databases (SQLite and PostgreSQL), Redis, in-process services."""

from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.fixtures.databases",
    "tests.fixtures.tokens",
    "tests.fixtures.stack",
    "tests.fixtures.test_agent",
    "tests.edge.support",
]

# Property tests run next to database suites on a 2-core CI box: time limits there would
# measure the machine's load, not the code, so they are off; the properties are still checked.
settings.register_profile("flowforge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("flowforge")
