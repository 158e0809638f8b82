"""Config helpers: paths, flattening, secret redaction, stable hashing."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from brevpipe import __version__

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # brevpipe/
REPO_DIR = PACKAGE_DIR.parent
# A wheel carries conf/ inside the package (pyproject's package-dir); a source checkout or an
# editable install reads it at the top level of the repository. Pipelines are conf/pipeline/.
CONF_DIR = PACKAGE_DIR / "conf" if (PACKAGE_DIR / "conf").is_dir() else REPO_DIR / "conf"

REDACTED = "***"
# scheme://user:PASSWORD@host: the password runs to the last "@" before a space, "?" or "#"
# (it may hold "/" and "@", as SQLAlchemy's URLs allow)
URL_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^/?#@\s:]*:)[^\s?#]*@")
SECRET_KEY_PATTERNS = ("*secret*", "*key*", "*token*", "*password*", "*credential*")
# Keys that match the patterns above but hold no secret.
NOT_SECRET_KEYS = frozenset({"cache_key", "key_metric", "monitor_key", "sort_key"})


def is_secret_key(key: str) -> bool:
    key = key.lower()
    if key in NOT_SECRET_KEYS:
        return False
    return any(fnmatch.fnmatch(key, pattern) for pattern in SECRET_KEY_PATTERNS)


def redact(obj: Any) -> Any:
    """A copy of a plain config tree with the values of secret-looking keys replaced, and the
    passwords of URLs (``postgresql://user:secret@host/db``)."""
    if isinstance(obj, Mapping):
        return {
            k: (REDACTED if is_secret_key(str(k)) and v is not None else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    return redact_url(obj) if isinstance(obj, str) else obj


def redact_url(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it replaced."""
    return URL_PASSWORD.sub(rf"\1{REDACTED}@", text)


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted ``(key, value)`` pairs of a nested mapping; lists are kept as values."""
    if isinstance(obj, Mapping) and obj:
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif prefix:
        yield prefix, obj


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-serialisable object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def code_version() -> str:
    """Package version plus a digest of the package's source, for stage cache keys."""

    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def compose(
    overrides: Sequence[str] = (), config_dir: str | None = None, with_hydra: bool = False
) -> Any:
    """The config ``brevpipe run OVERRIDES`` would run, as a DictConfig (``config_dir``: a
    user's config folder, as ``--config-dir``; ``with_hydra``: keep Hydra's node, whose
    ``runtime.choices`` name the group options)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    search = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*overrides, *search],
                             return_hydra_config=with_hydra)  # fmt: skip
