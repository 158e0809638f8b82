"""Who may do what, and which files may leave a job bucket.

Reading pages is open on a loopback address; elsewhere ``brevpipe ui`` refuses to start
without a token, and then every request needs it (``?token=`` once sets a cookie). Every
state-changing request (launch, stop, archive) needs the token, whatever the address, and must
come from the dashboard's own pages (same origin): the pages carry the token in their forms,
which another site's page cannot read.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fastapi import HTTPException, Request

from brevpipe.errors import ConfigError
from brevpipe.io import storage
from brevpipe.jobs.layout import JobBucket

TOKEN_VARIABLE = "BREVPIPE_UI_TOKEN"
COOKIE = "brevpipe_ui_token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Guard:
    """The dashboard's token; ``for_reads``: pages need it too (a non-loopback address)."""

    token: str
    for_reads: bool

    @classmethod
    def for_address(cls, host: str, token: str | None) -> Guard:
        """The guard for serving on ``host``; a clear error when that needs a token."""
        token = token or os.environ.get(TOKEN_VARIABLE) or None
        if not is_loopback(host) and not token:
            raise ConfigError(
                f"brevpipe ui on {host} is reachable from other machines: give it a token "
                f"(--token, or {TOKEN_VARIABLE}); every request will need it."
            )
        if token is not None and len(token) < 16:
            raise ConfigError("the dashboard's token is too short: use 16 characters or more "
                              "(python -c 'import secrets; print(secrets.token_urlsafe())').")
        # on a loopback address without a token, a random one still guards the actions
        return cls(token or secrets.token_urlsafe(24), for_reads=not is_loopback(host))

    def presented(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.query_params.get("token") or request.cookies.get(COOKIE)

    def matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def check_read(self, request: Request) -> None:
        if self.for_reads and not self.matches(self.presented(request)):
            raise HTTPException(401, "this dashboard needs its token: open it with ?token=...")

    def check_origin(self, request: Request) -> None:
        """A state-changing request from a browser comes from the dashboard's own pages (read
        before its body is); a script without a browser sends the token as a bearer header."""
        bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
        origin = request.headers.get("origin") or request.headers.get("referer")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin is None and bearer:
            return
        if origin is None or not (origin == own or origin.startswith(own + "/")):
            raise HTTPException(403, "this action must come from the dashboard's own pages")

    def check_write(self, request: Request, form_token: str | None) -> None:
        """A state-changing request: the dashboard's origin and its token (form field or
        bearer header)."""
        self.check_origin(request)
        bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
        if not self.matches(form_token if not bearer else self.presented(request)):
            raise HTTPException(403, "this action needs the dashboard's token")

    def allowed_hosts(self, host: str) -> frozenset[str] | None:
        """The ``Host`` names a request may carry: on a loopback address, the loopback names
        only (a page elsewhere that rebinds its own name to 127.0.0.1 is refused); with a
        token, any."""
        if self.for_reads:
            return None
        return frozenset({"127.0.0.1", "localhost", "::1", "[::1]", host})


def artifact_url(bucket: str, relative: str) -> str:
    """The URL of ``artifacts/<relative>`` in ``bucket``, refusing any path that could leave
    it: ``..``, absolute paths, backslashes, control characters, and local symbolic links."""
    if not relative or any(ord(c) < 32 for c in relative) or "\\" in relative:
        raise HTTPException(404, "no such artifact")
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or any(p in ("..", ".", "") for p in parts) or ":" in parts[0]:
        raise HTTPException(404, "no such artifact")
    base = JobBucket(bucket).artifact()
    url = storage.join(base, *parts)
    if storage.is_local(url):
        real, inside = Path(url).resolve(), Path(base).resolve()
        if Path(url).is_symlink() or inside not in real.parents or not real.is_file():
            raise HTTPException(404, "no such artifact")
        if any(p.is_symlink() for p in Path(url).parents if inside in p.parents or p == inside):
            raise HTTPException(404, "no such artifact")
    return url
