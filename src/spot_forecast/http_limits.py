"""HTTP edges of the service: bodies BentoML should not parse, and how rejected requests are logged.

The middleware rejects bodies that are too large or forms. ``quiet_client_errors`` keeps
BentoML from logging a rejected request as a server error with a traceback.
"""

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
        await send_error(
            send, 413,
            f"request body is {size} bytes or more; the limit is {self.max_body_bytes} "
            "bytes (SPOT_FORECAST_MAX_BODY_BYTES); send fewer or shorter histories",
        )


#: Content types of HTML forms. BentoML 1.4.40 parses them as forms: a malformed multipart body
#: raises starlette's HTTPException(400), which BentoML answers with 500, and a JSON body sent as
#: form-urlencoded (``curl -d`` without a content-type) fails with a misleading field error.
FORM_CONTENT_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class FormBodyRejection:
    """Answer 415 to any request whose body is a form; every endpoint here takes JSON."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        content_type = _media_type(scope) if scope["type"] == "http" else None
        if content_type in FORM_CONTENT_TYPES:
            logger.info("rejected a %s body to %s", content_type, scope.get("path"))
            await send_error(
                send, 415,
                f"content-type {content_type} is not supported; send the body as JSON with "
                "content-type application/json",
            )
            return
        await self.app(scope, receive, send)


async def send_error(send, status: int, message: str) -> None:
    """Send a JSON error body ``{"error": message}`` and close the connection."""
    payload = json.dumps({"error": message}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": payload})


def _media_type(scope) -> str | None:
    """Return the request's content type without parameters, in lower case, or None."""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return None


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


#: BentoML's HTTP application logs every exception of an endpoint here, 4xx ones included.
BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"


class ClientErrorLogFilter(logging.Filter):
    """Turn BentoML's ERROR record with a traceback for a rejected request into one INFO line.

    BentoML 1.4.40 logs "Exception on /path [POST]" at ERROR with the traceback when a request
    fails validation, although it returns 400 and the server is fine. Records of server errors
    (any other exception, or a BentoML error with a 5xx status) pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        status = _client_error_status(error)
        if status is not None:
            where = " ".join(f"{arg}" if i == 0 else f"[{arg}]"
                             for i, arg in enumerate(record.args or ("request",)))
            record.msg = "%s rejected with %d: %s"
            record.args = (where, status, _one_line(error))
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


def quiet_client_errors() -> None:
    """Install ``ClientErrorLogFilter`` on BentoML's HTTP logger once per process."""
    target = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorLogFilter) for f in target.filters):
        target.addFilter(ClientErrorLogFilter())


def _client_error_status(error: BaseException | None) -> int | None:
    """Return the 4xx status BentoML sends for ``error``, or None for a server error."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return 400
    code = getattr(getattr(error, "error_code", None), "value", None)
    if isinstance(code, int) and 400 <= code < 500:
        return code
    return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
