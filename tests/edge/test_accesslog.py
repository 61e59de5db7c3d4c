"""The edge's access log: one line per request with the request id, the same values as fields for
JSON logs, and no work at all when INFO lines would be dropped."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from edge.middlewares import ACCESS_LOGGER_NAME, REQUEST_ID_KEY, EdgeAccessLogger, access_logger
from flowforge_common.telemetry import JsonFormatter


def request_and_response() -> tuple[web.Request, web.Response]:
    request = make_mocked_request(
        "GET", "/api/v1/runs/run_1?fields=id", headers={"Authorization": "Bearer secret-token"}
    )
    request[REQUEST_ID_KEY] = "req_1"
    return request, web.Response(status=200, body=b"x" * 42)  # not sent: 0 bytes written


def test_one_line_per_request_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    request, response = request_and_response()
    logger = EdgeAccessLogger(logging.getLogger(ACCESS_LOGGER_NAME), "")
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER_NAME):
        assert logger.enabled
        logger.log(request, response, 0.01234)
    [record] = caplog.records
    assert record.getMessage() == '- "GET /api/v1/runs/run_1?fields=id" 200 0 12.3ms req_1'
    assert "secret-token" not in record.getMessage()
    document = json.loads(JsonFormatter().format(record))
    assert {key: document[key] for key in ("method", "path", "status", "bytes", "duration_ms", "request_id")} == {
        "method": "GET",
        "path": "/api/v1/runs/run_1?fields=id",
        "status": 200,
        "bytes": 0,
        "duration_ms": 12.3,
        "request_id": "req_1",
    }


def test_nothing_is_formatted_when_info_is_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=ACCESS_LOGGER_NAME):
        assert not EdgeAccessLogger(logging.getLogger(ACCESS_LOGGER_NAME), "").enabled


def test_the_setting_turns_the_log_off() -> None:
    assert access_logger(False) is None
    logger = access_logger(True)
    assert logger is not None
    assert logger.name == ACCESS_LOGGER_NAME
