"""HTTP edges of the service: bodies BentoML should not parse, and how rejected requests are logged.

The middleware rejects bodies that are too large or forms, and rewrites the headline of
BentoML's validation errors into what to send. ``quiet_client_errors`` keeps BentoML from
logging a rejected request as a server error with a traceback.
"""

from __future__ import annotations

import difflib
import json
import logging
import re

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


class ReadableValidationErrors:
    """Rewrite the headline of BentoML's 400 responses to failed validation into what to send.

    BentoML responds ``{"error": "1 validation error for JobCostRequestIODescriptor", "detail":
    [...]}``: the headline names an internal class and the details read "Field required" or
    "Input should be a valid number" without the field's meaning. The new headline names each
    field, the value received and the field's description from the request model, and suggests
    the closest field for an unknown one. ``detail`` stays as BentoML sent it.
    """

    def __init__(self, app, models=()):
        self.app = app
        self.models = {model.__name__: model for model in models}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_start: dict | None = None
        chunks: list[bytes] = []

        async def rewriting_send(message):
            nonlocal response_start
            if message["type"] == "http.response.start" and message["status"] == 400:
                response_start = message  # wait for the body, whose length may change
                return
            if response_start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = readable_validation_body(b"".join(chunks), self.models)
            headers = [(name, value) for name, value in response_start.get("headers", [])
                       if name.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**response_start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewriting_send)


_VALIDATION_HEADLINE = re.compile(r"^\d+ validation errors? for (\w+?)(?:IODescriptor)?$")
#: Time fields get this example, as pydantic's messages give none.
_TIME_EXAMPLE = "send a UTC time in ISO 8601, such as 2024-05-10T06:00:00Z"


def readable_validation_body(body: bytes, models: dict) -> bytes:
    """Return ``body`` with a readable headline if it is BentoML's validation error body."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if not isinstance(payload, dict) or not isinstance(payload.get("detail"), list):
        return body
    match = _VALIDATION_HEADLINE.match(str(payload.get("error", "")))
    if match is None:
        return body
    model = models.get(match.group(1))
    problems = [describe_problem(entry, model) for entry in payload["detail"]
                if isinstance(entry, dict)]
    payload["error"] = "; ".join(problems) or payload["error"]
    return json.dumps(payload).encode()


def describe_problem(entry: dict, model) -> str:
    """Describe one pydantic error in a sentence: the field, what was wrong, what to send."""
    location = entry.get("loc") or []
    field = _location_text(location)
    top = location[0] if location else None
    fields = getattr(model, "model_fields", {})
    info = fields.get(top) if isinstance(top, str) else None
    hint = info.description if info is not None and info.description else ""
    kind = str(entry.get("type", ""))
    message = str(entry.get("msg", "is invalid"))
    if kind == "missing":
        text = f"{field} is missing"
    elif kind == "extra_forbidden":
        close = difflib.get_close_matches(str(top), list(fields), n=1)
        text = f"{field} is not a field of this request"
        hint = f"did you mean {close[0]}?" if close else f"fields: {', '.join(fields)}"
    elif kind == "value_error":
        text = message.removeprefix("Value error, ")
        hint = ""  # the project's own validators already name what to send
    else:
        text = f"{field} is invalid: {message}"
        if "input" in entry:  # BentoML leaves the value out of its details
            text += f", got {_short_repr(entry['input'])}"
    if kind.startswith(("datetime", "date")):
        hint = f"{_TIME_EXAMPLE}. {hint}".strip()
    return f"{text} ({hint})" if hint else text


def _location_text(location) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return text or "the request body"


def _short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
