"""The operator's HTTP endpoint, one port: GET /healthz (liveness) and GET /metrics (Prometheus).

It runs in the operator's event loop for as long as kopf does (main.serve), so a stuck loop or a
stopped operator fails the liveness probe, as kopf's own endpoint would; /healthz answers 503 until
kopf has run the operator's startup (`started()` says when).
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp.web

from stylebatch.errors import StylebatchError

from stylebatch_operator.metrics import CONTENT_TYPE, Metrics


def application(metrics: Metrics, started: Callable[[], bool]) -> aiohttp.web.Application:
    async def healthz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({}, status=200 if started() else 503)

    async def scrape(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get("/healthz", healthz), aiohttp.web.get("/metrics", scrape)])
    return app


async def start(port: int, metrics: Metrics, started: Callable[[], bool], host: str = "0.0.0.0",
                ) -> aiohttp.web.AppRunner:
    """Serves until the returned runner's cleanup()."""
    runner = aiohttp.web.AppRunner(application(metrics, started), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await aiohttp.web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise StylebatchError(f"cannot serve /healthz and /metrics on port {port}: {exc.strerror}") from None
    return runner
