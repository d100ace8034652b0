"""Request bodies larger than service.max_body_bytes are refused with 413 before the app reads
them: by their Content-Length, or while they stream in when they do not declare one."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException


class BodyTooLarge(HTTPException):
    """An HTTPException, so that FastAPI, reading the body, passes it on as a 413 (not a 400)."""

    def __init__(self, max_bytes: int):
        super().__init__(413, _message(max_bytes))


def _message(max_bytes: int) -> str:
    return f"request body larger than {max_bytes} bytes (service.max_body_bytes); send fewer or shorter overrides"


class BodyLimit:
    """ASGI middleware."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": _message(self.max_bytes)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
