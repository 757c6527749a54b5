"""``python -m bench.bare_proxy --port N --upstream URL``: the least an aiohttp proxy can do:
read the body, POST it upstream on a kept-alive connection, answer with the upstream's bytes.

``hotcold bench proxy`` measures it beside the router as forwarding in Python with aiohttp's
server and client and nothing else, on the same event loop. The router shares the server
side with it; it forwards with its own client (router/http1.py), which costs less than
aiohttp's, so the difference is the router's own work (validation, classification, cache
keys, metrics, logs, retries) less what its client saves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from hotcold.serving import loop_factory

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", URL)


async def _forward(request: web.Request) -> web.Response:
    body = await request.read()
    async with request.app[SESSION].post(
        request.app[UPSTREAM], data=body, headers={"Content-Type": "application/json"}
    ) as answer:
        payload = await answer.read()
    return web.Response(body=payload, content_type="application/json")


def app(upstream: str) -> web.Application:
    application = web.Application()
    application[UPSTREAM] = URL(upstream.rstrip("/") + "/v1/chat/completions")

    async def session(application: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=1024)
        application[SESSION] = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        )
        yield
        await application[SESSION].close()

    application.cleanup_ctx.append(session)
    application.router.add_post("/v1/chat/completions", _forward)
    application.router.add_get("/health", lambda _: _ok())
    return application


async def _ok() -> web.Response:
    return web.Response(text="ok")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args(argv)
    factory = loop_factory()
    loop = factory() if factory is not None else asyncio.new_event_loop()
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            app(args.upstream),
            host="127.0.0.1",
            port=args.port,
            access_log=None,
            print=None,
            loop=loop,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
