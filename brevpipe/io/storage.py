"""fsspec helpers: file systems from URLs, joining, atomic writes, and calls that time out.

Every call to an asynchronous file system (s3fs, gcsfs, ...) made here carries a total time
limit (``storage.timeout_s``), so a request that never gets an answer, or never gets a pooled
connection, fails with a :class:`StorageError` naming the URL instead of hanging the job.
"""

from __future__ import annotations

import contextvars
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs
from fsspec.exceptions import FSTimeoutError

from brevpipe.config.settings import StorageSettings
from brevpipe.errors import DiskFullError, StorageError

DEFAULT_TIMEOUT_S = StorageSettings.timeout_s
# Concurrent reads per request batch of :func:`cat_many` (s3fs pools 10 connections per client).
CAT_BATCH = 64
T = TypeVar("T")


@dataclass(frozen=True)
class StorageOptions:
    """A job's ``storage`` settings: fsspec keyword arguments per protocol (``{"s3":
    {"client_kwargs": ...}}``, over what fsspec's config files and variables give) and the time
    limit of one remote call."""

    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S


# The storage settings of the job running in this context: a context variable, not a process
# global, so that jobs side by side in one process (a notebook, a launcher, the dashboard) each
# use their own. A new thread starts with the defaults; :func:`carried` hands them on.
_CURRENT: contextvars.ContextVar[StorageOptions | None] = contextvars.ContextVar(
    "brevpipe_storage", default=None
)


def configure(
    options: dict[str, dict[str, Any]] | None, timeout_s: float | None = None
) -> StorageOptions:
    """Use these ``storage.options`` and ``storage.timeout_s`` in this context (the runner
    does, once per job)."""
    settings = StorageOptions(
        {protocol: dict(kwargs or {}) for protocol, kwargs in (options or {}).items()},
        float(timeout_s) if timeout_s else DEFAULT_TIMEOUT_S,
    )
    _CURRENT.set(settings)
    return settings


def current() -> StorageOptions:
    """The storage settings :func:`configure` set in this context."""
    return _CURRENT.get() or StorageOptions()


def carried(function: Callable[..., T]) -> Callable[..., T]:
    """``function``, to be called in another thread with this context's job settings (storage
    options, the data cache): a thread pool's or a background thread's target."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.copy().run(function, *args, **kwargs)


def call(
    fs: fsspec.AbstractFileSystem, url: str, method: str, *args: Any, limit: bool = True,
    **kwargs: Any,
) -> Any:  # fmt: skip
    """``fs.<method>(*args, **kwargs)`` within ``storage.timeout_s`` on asynchronous file systems.

    fsspec's synchronous wrapper waits for its event loop without a limit; with ``timeout`` it
    cancels the request (which gives its pooled connection back) and raises. ``url`` names the
    thing in the error. ``limit=False`` for whole-file transfers, whose length depends on the
    file's size (each request still has the client's own connect and read timeouts).
    """
    if limit and getattr(fs, "async_impl", False) and not getattr(fs, "asynchronous", False):
        kwargs["timeout"] = current().timeout_s
    try:
        return getattr(fs, method)(*args, **kwargs)
    except FSTimeoutError:
        limit = current().timeout_s
        raise StorageError(
            f"{url}: no answer within {limit:g} s; check the endpoint and the network "
            "(storage.options), or give slow storage more time with storage.timeout_s=..."
        ) from None


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
    """The file system and in-filesystem path for ``url``, made with this context's
    ``storage.options`` for its protocol."""
    return url_to_fs(url, **current().options.get(protocol_of(url), {}))


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
    return call(fs, url, "exists", path)


def read_bytes(url: str) -> bytes:
    fs, path = get_fs(url)
    return call(fs, url, "cat_file", path)


def cat_many(urls: list[str]) -> dict[str, bytes | BaseException]:
    """The bytes of each URL (or the exception that reading it raised), read concurrently:
    one ``fs.cat`` per batch of :data:`CAT_BATCH` URLs of the same file system, each batch
    within ``storage.timeout_s``. Call it from the thread that owns the work, not from tf.data's
    threads (see :mod:`brevpipe.data.mirror`)."""
    out: dict[str, bytes | BaseException] = {}
    for start in range(0, len(urls), CAT_BATCH):
        batch = urls[start : start + CAT_BATCH]
        # one file system per protocol (its options are the protocol's): with
        # skip_instance_cache every get_fs is a new instance, and one cat per URL was serial
        groups: dict[str, tuple[fsspec.AbstractFileSystem, dict[str, str]]] = {}
        for url in batch:
            protocol = protocol_of(url)
            if protocol not in groups:
                groups[protocol] = (get_fs(url)[0], {})
            fs, by_path = groups[protocol]
            by_path[fs._strip_protocol(url)] = url
        for fs, by_path in groups.values():
            contents = call(fs, next(iter(by_path.values())), "cat", list(by_path),
                            on_error="return")  # fmt: skip
            for path, url in by_path.items():
                out[url] = contents.get(path, FileNotFoundError(url))
    return out


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
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)  # nothing half-written stays behind
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(url, len(data)) from None
            raise
    else:
        call(fs, url, "pipe_file", path, data)


def disk_full(url: str, needed: int) -> DiskFullError:
    """The error for a local write of ``needed`` bytes to ``url`` that found its device full."""
    folder = Path(url).parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    return DiskFullError(
        f"{url}: its device is full ({free:,} bytes free, {needed:,} to write)", url, free, needed
    )


def write_many(blobs: dict[str, bytes]) -> None:
    """Write several URLs of one remote file system at once (one concurrent ``fs.pipe`` per
    :data:`CAT_BATCH` files, each within ``storage.timeout_s``); each PUT is atomic."""
    urls = list(blobs)
    for start in range(0, len(urls), CAT_BATCH):
        batch = urls[start : start + CAT_BATCH]
        fs, _ = get_fs(batch[0])
        call(fs, batch[0], "pipe", {get_fs(url)[1]: blobs[url] for url in batch})


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()


def write_json(url: str, obj: Any) -> None:
    write_bytes(url, json_bytes(obj))


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
        call(fs, url, "put_file", str(local_path), path, limit=False)


def download(url: str, local_path: str | Path) -> None:
    """Copy a remote file to a local path."""
    fs, path = get_fs(url)
    Path(local_path).parent.mkdir(parents=True, exist_ok=True)
    call(fs, url, "get_file", path, str(local_path), limit=False)
