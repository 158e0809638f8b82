"""The service's bearer tokens: JWT HS256 with ``exp``, signed with a secret of 32+ bytes.

``brevpipe serve --make-token`` prints one; :func:`token_problem` says why a token is refused.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import jwt

from brevpipe.errors import ConfigError

DEFAULT_SECRET_ENV = "BREVPIPE_JWT_SECRET"
MIN_SECRET_BYTES = 32  # HS256 wants a key of at least 256 bits (RFC 7518, 3.2)
ALGORITHM = "HS256"
NEW_SECRET = "python -c 'import secrets; print(secrets.token_hex(32))'"


def check_secret(secret: str) -> str:
    """``secret`` if it is long enough for HS256, else a :class:`ConfigError`."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"the JWT secret has {len(secret.encode())} bytes; use at least "
                          f"{MIN_SECRET_BYTES} (make one with: {NEW_SECRET}).")  # fmt: skip
    return secret


def make_token(secret: str, expires_in: int = 3600, subject: str | None = None) -> str:
    """A bearer token for the service: JWT HS256 expiring ``expires_in`` seconds from now."""
    if expires_in < 1:
        raise ConfigError(f"expires_in={expires_in}: a token must expire; use 1 second or more.")
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now, "exp": now + int(expires_in)}
    if subject:
        claims["sub"] = subject
    return jwt.encode(claims, check_secret(secret), algorithm=ALGORITHM)


def read_secret(secret_env: str = DEFAULT_SECRET_ENV, secret_file: str | None = None) -> str:
    """The JWT secret from ``secret_file`` (stripped) or the environment variable."""
    if secret_file:
        path = Path(secret_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"--secret-file {secret_file} does not exist: give a file holding "
                              f"the secret, or set {secret_env}.")  # fmt: skip
        return check_secret(path.read_text().strip())
    secret = os.environ.get(secret_env, "").strip()
    if not secret:
        raise ConfigError(f"no JWT secret: set {secret_env} (e.g. export {secret_env}=$("
                          f"{NEW_SECRET})) or pass --secret-file PATH.")  # fmt: skip
    return check_secret(secret)


def token_problem(token: str | None, secret: str) -> str | None:
    """Why ``token`` is refused (a sentence naming the fix), or None when it is valid."""
    if token is None:
        return ("missing bearer token: send 'Authorization: Bearer <token>' (brevpipe serve "
                "--make-token prints one).")
    try:
        jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        return "bearer token expired: get a new one (brevpipe serve --make-token)."
    except jwt.InvalidSignatureError:
        return ("bearer token signature does not match this service's secret: make the token "
                "with the same secret.")
    except jwt.MissingRequiredClaimError:
        return ("bearer token has no 'exp' claim: tokens must expire (brevpipe serve "
                "--make-token --expires-in SECONDS).")
    except jwt.InvalidTokenError as exc:
        return f"invalid bearer token ({exc}): make one with brevpipe serve --make-token."
    return None
