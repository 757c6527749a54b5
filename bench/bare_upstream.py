"""``python -m bench.bare_upstream --port N``: the least an aiohttp server can do for a
completion: one handler answering a fixed chat completion, nothing else on the path.

It is the instant upstream behind every proxy in ``hotcold bench proxy`` and, measured
directly, the floor a cache hit is compared with (a cache hit is a dictionary lookup and the
same kind of answer). It runs on uvloop when that is installed, as the router does, so the
two are compared on the same event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import orjson
from aiohttp import web

from hotcold.serving import loop_factory

ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a fixed answer of a few tokens"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15},
    }
)
MODELS = orjson.dumps({"object": "list", "data": [{"id": "bench", "object": "model"}]})


async def _completion(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


async def _models(request: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def app() -> web.Application:
    application = web.Application()
    application.router.add_post("/v1/chat/completions", _completion)
    application.router.add_post("/v1/completions", _completion)
    application.router.add_get("/v1/models", _models)
    application.router.add_get("/health", _health)
    application.router.add_get("/healthz", _health)
    return application


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_upstream", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    factory = loop_factory()
    loop = factory() if factory is not None else asyncio.new_event_loop()
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(app(), host=args.host, port=args.port, access_log=None, print=None, loop=loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
