"""Bearer tokens with a read or a write scope (write includes read).

Tokens come from service.tokens_file (lines "SCOPE TOKEN"; # comments) and from the environment
(QRECIPE_API_TOKENS="write:TOKEN,read:TOKEN"). With none configured the service binds to
loopback only (serve.py) and every local caller may write. Tokens are compared in constant time
and never logged; the actor recorded for a write is a short hash of the token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, HTTPException, Request

from qrecipe.engine.errors import ConfigError

SCOPES = ("read", "write")
ENV = "QRECIPE_API_TOKENS"


@dataclass(frozen=True)
class Principal:
    actor: str
    scope: str


def _parse(entries: list[tuple[str, str]], where: str) -> dict[str, str]:
    tokens = {}
    for scope, token in entries:
        if scope not in SCOPES:
            raise ConfigError(f"{where}: scope {scope!r} is neither read nor write; write entries as SCOPE TOKEN")
        if len(token) < 16:
            raise ConfigError(f"{where}: a {scope} token is shorter than 16 characters; use a long random token "
                              f"(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        tokens[token] = scope
    return tokens


def load_tokens(tokens_file: str | None) -> dict[str, str]:
    """token -> scope, from the file and the environment."""
    tokens: dict[str, str] = {}
    if tokens_file:
        path = Path(tokens_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"service.tokens_file: {path} does not exist; create it with lines 'write TOKEN' or "
                              f"'read TOKEN', or leave it null")
        lines = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if any(len(parts) != 2 for parts in lines):
            raise ConfigError(f"service.tokens_file: every line of {path} must be 'SCOPE TOKEN'")
        tokens.update(_parse([(p[0], p[1]) for p in lines], "service.tokens_file"))
    env = os.environ.get(ENV, "")
    entries = [e.strip() for e in env.replace("\n", ",").split(",") if e.strip()]
    if any(":" not in e for e in entries):
        raise ConfigError(f"{ENV}: write entries as SCOPE:TOKEN separated by commas, e.g. write:TOKEN1,read:TOKEN2")
    tokens.update(_parse([tuple(e.split(":", 1)) for e in entries], ENV))
    return tokens


def actor_of(token: str) -> str:
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:10]


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def principal(request: Request) -> Principal:
    tokens: dict[str, str] = request.app.state.tokens
    if not tokens:
        return Principal(actor="local", scope="write")
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("missing bearer token: send the header 'Authorization: Bearer TOKEN'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("malformed Authorization header: expected 'Bearer TOKEN'")
    scope = None
    for known, known_scope in tokens.items():  # constant time per comparison, whichever matches
        if hmac.compare_digest(known.encode(), token.encode()):
            scope = known_scope
    if scope is None:
        raise _unauthorized("invalid token: this service does not know it")
    return Principal(actor=actor_of(token), scope=scope)


def reader(who: Principal = Depends(principal)) -> Principal:
    return who


def writer(request: Request, who: Principal = Depends(principal)) -> Principal:
    if who.scope != "write":
        raise HTTPException(status_code=403, detail=f"{request.method} {request.url.path} needs a token with write "
                                                    f"scope; this one can only read")
    return who
