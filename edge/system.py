"""Hand-written system routes: liveness, readiness, metrics, OpenAPI and the Swagger UI."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from edge.metrics import METRICS_KEY
from edge.openapi import OPENAPI_KEY
from edge.problems import ProblemError
from edge.ratelimit import RATE_LIMITER_KEY
from edge.settings import SETTINGS_KEY
from edge.upstream import UPSTREAMS_KEY

SWAGGER_UI_DIR = Path(str(swagger_ui_path))
# The Swagger UI files the docs page loads, served from the installed package (no CDN).
SWAGGER_ASSETS = ("swagger-ui.css", "index.css", "swagger-ui-bundle.js", "favicon-16x16.png", "favicon-32x32.png")
# Swagger UI needs inline styles and data: images; scripts and API calls stay same-origin.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
)
DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>FlowForge API</title>
    <link rel="stylesheet" type="text/css" href="/docs/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="/docs/index.css">
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
    <link rel="icon" type="image/png" href="/docs/favicon-16x16.png" sizes="16x16">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="/docs/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
"""
# A file rather than an inline script, so the page's CSP can forbid inline scripts.
# Swagger UI 4 renders OpenAPI 3.0 only: it loads the 3.0 rendition of /openapi.json.
DOCS_INITIALIZER = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/docs/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
};
"""


async def health(_request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: every backend service (and, through its health, its database) is serving.
    The rate limiter's backend is reported too; a limiter that fell back to memory because
    Redis is unreachable keeps the edge serving, so it does not make the edge unready."""
    checks = await request.app[UPSTREAMS_KEY].health(request.app[SETTINGS_KEY].ready_timeout_seconds)
    rate_limiter = request.app[RATE_LIMITER_KEY].backend
    failing = {service: status for service, status in checks.items() if status != "serving"}
    if failing:
        raise ProblemError(
            503,
            "not ready: " + ", ".join(f"{service} is {status}" for service, status in failing.items()),
            "NOT_READY",
            extensions={"checks": checks, "rate_limiter": rate_limiter},
        )
    return web.json_response({"status": "ready", "checks": checks, "rate_limiter": rate_limiter})


async def status(request: web.Request) -> web.Response:
    """Health of every backend service, for dashboards (always 200, unlike readiness)."""
    checks = await request.app[UPSTREAMS_KEY].health(request.app[SETTINGS_KEY].ready_timeout_seconds)
    overall = "ok" if all(value == "serving" for value in checks.values()) else "degraded"
    return web.json_response({"status": overall, "services": checks})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the edge's own metrics."""
    return request.app[METRICS_KEY].exposition()


async def openapi_31(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document (generated once at startup)."""
    return web.Response(body=request.app[OPENAPI_KEY].json_31, content_type="application/json")


async def openapi_30(request: web.Request) -> web.Response:
    """The same document as OpenAPI 3.0, for the bundled Swagger UI."""
    return web.Response(body=request.app[OPENAPI_KEY].json_30, content_type="application/json")


async def docs_page(_request: web.Request) -> web.Response:
    """The Swagger UI page."""
    return web.Response(text=DOCS_PAGE, content_type="text/html", headers={"Content-Security-Policy": DOCS_CSP})


async def docs_initializer(_request: web.Request) -> web.Response:
    """The script that starts Swagger UI on our document."""
    return web.Response(text=DOCS_INITIALIZER, content_type="text/javascript")


async def docs_asset(request: web.Request) -> web.StreamResponse:
    """One of the whitelisted Swagger UI files."""
    name = request.match_info["asset"]
    if name not in SWAGGER_ASSETS:
        raise web.HTTPNotFound()
    return web.FileResponse(SWAGGER_UI_DIR / name, headers={"Cache-Control": "public, max-age=86400"})


def add_system_routes(app: web.Application) -> None:
    """Registers the hand-written system routes."""
    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/status", status)
    app.router.add_get("/openapi.json", openapi_31)
    app.router.add_get("/docs", docs_page)
    app.router.add_get("/docs/", docs_page)
    app.router.add_get("/docs/openapi.json", openapi_30)
    app.router.add_get("/docs/swagger-initializer.js", docs_initializer)
    app.router.add_get("/docs/{asset}", docs_asset)
