"""Server-sent events as the OpenAI streaming API uses them.

Each event is ``data: <json>\\n\\n`` and the stream ends with ``data: [DONE]\\n\\n``. The
parser is incremental because upstream chunks do not align with event boundaries.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Tell reverse proxies (nginx) in front of us not to buffer the stream.
    "X-Accel-Buffering": "no",
}


def sse_event(document: Any) -> bytes:
    """One ``data:`` event carrying a JSON document."""
    return b"data: " + orjson.dumps(document) + b"\n\n"


async def iter_sse_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Re-frame a byte stream into whole SSE events (each ending in a blank line).

    Yields the raw event bytes including the terminating blank line, so a proxy can pass
    them on unchanged while still knowing where each event ends.
    """
    buffer = b""
    async for chunk in chunks:
        buffer += chunk.replace(b"\r\n", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            yield buffer[: end + 2]
            buffer = buffer[end + 2 :]
    if buffer.strip():
        yield buffer if buffer.endswith(b"\n\n") else buffer.rstrip(b"\n") + b"\n\n"


def event_data(event: bytes) -> bytes | None:
    """The payload of an SSE event's ``data:`` lines joined, or None for comment-only events."""
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(lines)
