"""ASGI middleware that rejects request bodies over a size limit before they are parsed."""

from __future__ import annotations

import json
import logging

logger = logging.getLogger(__name__)


class BodySizeLimit:
    """Answer 413 to any HTTP request whose body exceeds ``max_body_bytes``.

    A declared ``Content-Length`` over the limit is rejected before a byte of the body is read.
    A body without a length (chunked) is read up to the limit and rejected as soon as it passes
    it, so the application never sees a partial body.
    """

    def __init__(self, app, max_body_bytes: int = 5_000_000):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        length = _content_length(scope)
        if length is not None:
            if length > self.max_body_bytes:
                await self._reject(scope, send, length)
                return
            await self.app(scope, receive, send)
            return

        if scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return

        # Chunked body: buffer it up to the limit, then replay it to the application.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._reject(scope, send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, send, size: int) -> None:
        logger.warning("rejected a %d-byte body to %s: the limit is %d bytes",
                       size, scope.get("path"), self.max_body_bytes)
        payload = json.dumps({
            "error": f"request body is {size} bytes or more; the limit is {self.max_body_bytes} "
                     "bytes (SPOT_FORECAST_MAX_BODY_BYTES); send fewer or shorter histories"
        }).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
