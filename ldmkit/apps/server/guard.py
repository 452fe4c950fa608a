"""Every request passes here first (an ASGI middleware): the body-size limit, HTTP basic auth on
every route when users are configured (compared in constant time), and no cross-site writes: a
browser's POST from another site (CSRF against a server on localhost) carries a foreign Origin or
Sec-Fetch-Site, and is refused, as is a POST body that is not JSON."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from urllib.parse import urlsplit

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def error_body(status: int, message: str, error: str = "HTTPException") -> bytes:
    """A1111's error shape: {error, detail, body, errors}."""
    return json.dumps({"error": error, "detail": message, "body": "", "errors": message}).encode()


class Guard:
    def __init__(self, app, users: dict[str, str], max_body_bytes: int):
        self.app, self.users, self.max_body_bytes = app, users, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.users and not self._authorised(headers.get("authorization", "")):
            return await _answer(send, 401, "a user name and password are needed (HTTP basic auth)",
                                 [(b"www-authenticate", b'Basic realm="ldmkit"')])
        if scope["method"] not in SAFE_METHODS:
            refusal = self._cross_site(headers)
            if refusal:
                return await _answer(send, 403, refusal)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _answer(send, 413, f"the request body is {declared} bytes; the limit is {self.max_body_bytes}")
        body, more = b"", True
        while more:  # read whole (bounded), so a body without a length is held to the limit too
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await _answer(send, 413, f"the request body is over the limit of {self.max_body_bytes} bytes")
        if body and scope["method"] not in SAFE_METHODS and \
                headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return await _answer(send, 415, "POST bodies are JSON: send Content-Type: application/json")
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    def _authorised(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        ok = False
        for known_user, known_password in self.users.items():  # every entry compared: constant time
            ok |= secrets.compare_digest(user.encode(), known_user.encode()) & \
                secrets.compare_digest(password.encode(), known_password.encode())
        return ok

    @staticmethod
    def _cross_site(headers: dict[str, str]) -> str | None:
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {headers['sec-fetch-site']})"
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != headers.get("host", ""):
            return f"cross-site request refused (Origin {origin} is not this server)"
        return None


async def _answer(send, status: int, message: str, extra_headers=()) -> None:
    body = error_body(status, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra_headers]})
    await send({"type": "http.response.body", "body": body})
