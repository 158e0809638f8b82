"""fsspec helpers: file systems from URLs, joining, and atomic writes."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

# Per-protocol fsspec keyword arguments (``storage.options`` in the config). Set once per
# process by the runner; never contains anything we write into artifacts.
_STORAGE_OPTIONS: dict[str, dict[str, Any]] = {}


def set_storage_options(options: dict[str, dict[str, Any]] | None) -> None:
    """Register fsspec keyword arguments per protocol, e.g. ``{"s3": {"client_kwargs": ...}}``."""
    _STORAGE_OPTIONS.clear()
    _STORAGE_OPTIONS.update({k: dict(v or {}) for k, v in (options or {}).items()})


def protocol_of(url: str) -> str:
    """The fsspec protocol of a URL (``file`` for plain paths)."""
    return url.split("://", 1)[0] if "://" in url else "file"


def is_local(url: str) -> bool:
    return protocol_of(url) in ("file", "local")


def normalize(url: str) -> str:
    """Absolute local paths for local URLs (never relative to a later chdir); others unchanged."""
    if is_local(url):
        return str(Path(url.removeprefix("file://")).expanduser().resolve())
    return url.rstrip("/")


def get_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system and in-filesystem path for ``url``, with the configured options."""
    return url_to_fs(url, **_STORAGE_OPTIONS.get(protocol_of(url), {}))


def join(base: str, *parts: str) -> str:
    """Join URL parts with ``/`` (works for local paths and any fsspec URL)."""
    out = base.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def exists(url: str) -> bool:
    fs, path = get_fs(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = get_fs(url)
    return fs.cat_file(path)


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` so that readers never see a half-written file.

    Local files go through a temporary name and ``os.replace``; object stores (S3, memory)
    make a single PUT visible at once, so a plain write is already atomic there.
    """
    fs, path = get_fs(url)
    if is_local(url):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json(url: str, obj: Any) -> None:
    write_bytes(url, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def upload(local_path: str | Path, url: str) -> None:
    """Copy a local file or folder to ``url``."""
    fs, path = get_fs(url)
    local_path = Path(local_path)
    if local_path.is_dir():
        for file in sorted(p for p in local_path.rglob("*") if p.is_file()):
            upload(file, join(url, file.relative_to(local_path).as_posix()))
        return
    if is_local(url):
        write_bytes(url, local_path.read_bytes())
    else:
        fs.put_file(str(local_path), path)


def download(url: str, local_path: str | Path) -> None:
    """Copy a remote file to a local path."""
    fs, path = get_fs(url)
    Path(local_path).parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(path, str(local_path))
