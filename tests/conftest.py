"""Shared fixtures: databases (SQLite and PostgreSQL), Redis, in-process services."""

pytest_plugins = ["tests.fixtures.databases", "tests.fixtures.tokens", "tests.fixtures.stack"]
