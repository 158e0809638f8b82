"""Local copies of remote images, fetched by the calling thread before tf.data reads them.

tf.data runs its map functions on TensorFlow's own threads. Remote reads issued from there
through fsspec's synchronous wrapper hung jobs on S3: fsspec caches one file system, so one
S3 client and connection pool, per thread; and a dataset abandoned mid-stream (an endless
dataset cut by steps, a preview that takes a few batches) leaves those threads blocked on reads
in flight while the job's next storage call waits on the same event loop for a connection.
So remote images are copied once, from the thread that builds the dataset, in concurrent
batches with a time limit each (:func:`brevpipe.io.storage.cat_many`); tf.data reads local files
only. Later epochs then read local files too, instead of going back to S3.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from brevpipe.errors import DataError
from brevpipe.io import storage
from brevpipe.jobs.liveness import temp_prefix

log = logging.getLogger("brevpipe")
_FOLDERS: dict[bool, Path] = {}
_LOCK = threading.Lock()


def mirror_folder(kept: bool = True) -> Path:
    """The folder of copies: ``$BREVPIPE_MIRROR_DIR`` if set and ``kept`` (copies keyed by a
    content hash may outlive the process), else this process's temporary
    ``brevpipe-mirror-<pid>-*`` folder, removed when it exits."""
    configured = os.environ.get("BREVPIPE_MIRROR_DIR") if kept else None
    with _LOCK:
        if bool(configured) not in _FOLDERS:
            if configured:
                folder = Path(configured).expanduser().resolve()
                folder.mkdir(parents=True, exist_ok=True)
            else:
                folder = Path(tempfile.mkdtemp(prefix=temp_prefix("mirror")))
                atexit.register(shutil.rmtree, folder, ignore_errors=True)
            _FOLDERS[bool(configured)] = folder
        return _FOLDERS[bool(configured)]


def copy_name(url: str, etag: str | None) -> str:
    """The file name of a copy: a digest of the URL and its content hash, with its extension
    (a changed file, with a new etag, never reuses an old copy)."""
    digest = hashlib.sha256(f"{url}\n{etag or ''}".encode()).hexdigest()[:32]
    suffix = Path(url.rsplit("/", 1)[-1]).suffix.lower()[:8]
    return f"{digest[:2]}/{digest}{suffix}"


def local_copies(
    urls: Sequence[str], etags: Sequence[str | None] | None = None, folder: Path | None = None,
    failures: dict[str, str] | None = None,
) -> list[str]:  # fmt: skip
    """A local path for each URL: local URLs as they are, remote ones copied into ``folder``
    (default :func:`mirror_folder`; copies without an etag only into this process's own
    folder, so that a changed file is never served from an old copy) unless a copy is already
    there. Unreadable URLs raise a :class:`DataError` naming them, or, given ``failures``, are
    recorded there (url -> reason) and their path does not exist."""
    etags = list(etags) if etags is not None else [None] * len(urls)
    out: list[str] = []
    wanted: dict[str, Path] = {}
    for url, etag in zip(urls, etags, strict=True):
        if storage.is_local(url):
            out.append(url)
            continue
        target = (folder or mirror_folder(kept=bool(etag))) / copy_name(url, etag)
        out.append(str(target))
        if not target.exists():
            wanted[url] = target
    if wanted:
        _fetch(wanted, failures)
    return out


def _fetch(wanted: dict[str, Path], failures: dict[str, str] | None = None) -> None:
    started = time.perf_counter()
    urls = list(wanted)
    log.info("copying %d remote images to local disk (%s...)", len(urls), urls[0])
    failed: list[str] = []
    for start in range(0, len(urls), 1024):  # bounded memory: a thousand images at a time
        contents = storage.cat_many(urls[start : start + 1024])
        for url, data in contents.items():
            if isinstance(data, BaseException):
                reason = f"{type(data).__name__}: {data}"
                if failures is not None:
                    failures[url] = f"cannot read it ({reason})"
                else:
                    failed.append(f"{url} ({reason})")
                continue
            target = wanted[url]
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            partial.write_bytes(data)
            os.replace(partial, target)
    if failed:
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise DataError(
            f"cannot read {len(failed)} image(s): {'; '.join(failed[:5])}{more}. Check that they "
            "exist and that the credentials (storage.options, AWS_*) may read them."
        )
    seconds = time.perf_counter() - started
    log.info("copied %d images in %.1f s (%.0f images/s)", len(urls), seconds,
             len(urls) / max(seconds, 1e-9))  # fmt: skip
