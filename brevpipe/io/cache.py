"""The data cache that jobs share, on any fsspec URL (``runtime.cache_root``), keyed by content.

    <cache root>/
        listings/<key>.json                  the content hashes of a dataset listing, keyed by
                                             the dataset URL and its files' names, sizes, etags
        images/<loader key>/<kk>/<content hash>.<u8|f32>
                                             one decoded, resized image (raw array bytes), keyed
                                             by the image's content and the loader's settings
        usage/<id>.json                      the entries one job used, and when

An entry is written whole or not at all (a local file goes through a temporary name and a
rename; an object store makes one PUT visible at once), so jobs filling the same key at the
same time are safe: the last write wins, with the same bytes. Past ``max_bytes`` the least
recently used entries go; "used" comes from the usage records, which work on any store (an
object store cannot touch a file's time). The cache is an optimisation only: what a job
computes is the same with it, without it, and with a cold or warm one.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brevpipe.config.settings import RuntimeSettings
from brevpipe.io import storage

log = logging.getLogger("brevpipe")
LISTINGS, IMAGES, USAGE = "listings", "images", "usage"
KINDS = (LISTINGS, IMAGES)
DEFAULT_MAX_GB = RuntimeSettings.cache_max_gb
OFF = ("", "none", "null", "off", "false")
COMPACT_AFTER = 16  # usage records before they are merged into one


def user_cache_folder() -> Path:
    """``brevpipe`` in the user cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "brevpipe"


def default_root() -> str:
    """``$BREVPIPE_CACHE_ROOT``, else ``data`` in :func:`user_cache_folder`."""
    if configured := os.environ.get("BREVPIPE_CACHE_ROOT"):
        return configured
    return str(user_cache_folder() / "data")


@dataclass(frozen=True)
class DataCache:
    """A cache root and its size cap."""

    root: str
    max_bytes: int = int(DEFAULT_MAX_GB * 1e9)

    @classmethod
    def from_settings(cls, root: str | None, max_gb: float | None = None) -> DataCache | None:
        """``runtime.cache_root`` (``auto``: :func:`default_root`; null or ``none``: no
        cache) and ``runtime.cache_max_gb``."""
        if root is None or str(root).strip().lower() in OFF:
            return None
        url = default_root() if str(root) == "auto" else str(root)
        gigabytes = DEFAULT_MAX_GB if max_gb is None else float(max_gb)
        return cls(storage.normalize(url), max(0, int(gigabytes * 1e9)))

    @property
    def local(self) -> bool:
        return storage.is_local(self.root)

    def url(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def read_json(self, kind: str, key: str) -> Any | None:
        """The JSON entry ``<kind>/<key>.json``, or None when it is missing or unreadable."""
        url = self.url(kind, f"{key}.json")
        try:
            return storage.read_json(url)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a bad entry is a miss, never a failure
            log.warning("cache entry %s unreadable (%s): computing it again", url, exc)
            return None

    def write_json(self, kind: str, key: str, value: Any) -> None:
        self.write_many({storage.join(kind, f"{key}.json"): storage.json_bytes(value)})

    def sizes(self, folder: str) -> dict[str, int]:
        """Relative path -> size of every entry under ``folder`` (empty when there is none)."""
        return {name: int(size) for name, (size, _) in self.listing(folder).items()}

    def listing(self, folder: str) -> dict[str, tuple[float, float]]:
        """Relative path -> (size, modification time) of every entry under ``folder``. Other
        jobs may add and remove files meanwhile: what vanishes while listed is left out."""
        url = self.url(folder)
        if self.local:
            out = {}
            for parent, _, names in os.walk(url):
                for name in names:
                    if ".tmp-" in name:
                        continue
                    try:
                        stat = os.stat(os.path.join(parent, name))
                    except FileNotFoundError:
                        continue
                    relative = os.path.relpath(os.path.join(parent, name), url)
                    out[relative.replace(os.sep, "/")] = (stat.st_size, stat.st_mtime)
            return out
        fs, path = storage.get_fs(url)
        try:
            found = storage.call(fs, url, "find", path, detail=True)
        except FileNotFoundError:
            return {}
        base = path.rstrip("/") + "/"
        return {name[len(base):]: (float(info.get("size") or 0), _modified(info))
                for name, info in found.items()
                if name.startswith(base) and ".tmp-" not in name}  # fmt: skip

    def write_many(self, blobs: dict[str, bytes]) -> None:
        """Write entries (relative path -> bytes), each atomically; a failure is a warning."""
        try:
            if self.local:
                for name, data in blobs.items():
                    storage.write_bytes(self.url(name), data)
            elif blobs:
                storage.write_many({self.url(name): data for name, data in blobs.items()})
        except Exception as exc:  # noqa: BLE001 - the job goes on without these entries
            log.warning("cannot write %d entries to the data cache %s: %s", len(blobs),
                        self.root, exc)  # fmt: skip

    def record_use(self, entries: list[str]) -> None:
        """Note that these entries were used now (for least-recently-used eviction)."""
        if entries:
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
            self.write_json(USAGE, name, {"time": time.time(), "entries": entries})

    def last_used(self) -> dict[str, float]:
        """Entry -> when a job last used it, from the usage records."""
        used: dict[str, float] = {}
        for name in self.sizes(USAGE):
            record = self.read_json(USAGE, name.removesuffix(".json")) or {}
            when = float(record.get("time") or 0)
            times = {**dict.fromkeys(record.get("entries") or [], when),
                     **(record.get("used") or {})}  # fmt: skip
            for entry, at in times.items():
                used[entry] = max(used.get(entry, 0.0), float(at))
        return used

    def entries(self) -> dict[str, dict[str, float]]:
        """Entry -> ``{size, used}``: its size and when it was last written or used."""
        used = self.last_used()
        out = {}
        for kind in KINDS:
            for name, (size, written) in self.listing(kind).items():
                entry = f"{kind}/{name}"
                out[entry] = {"size": size, "used": max(written, used.get(entry, 0.0))}
        return out

    def info(self) -> dict[str, Any]:
        """What ``brevpipe cache info`` prints: entries and bytes per kind, cap, last use."""
        entries = self.entries()
        kinds = {kind: {"entries": 0, "bytes": 0} for kind in KINDS}
        for name, entry in entries.items():
            kinds[name.split("/", 1)[0]]["entries"] += 1
            kinds[name.split("/", 1)[0]]["bytes"] += int(entry["size"])
        return {"root": self.root, "max_bytes": self.max_bytes, "kinds": kinds,
                "bytes": sum(k["bytes"] for k in kinds.values()),
                "last_used": max((e["used"] for e in entries.values()), default=None)}  # fmt: skip

    def evict(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove the least recently used entries until the cache fits ``max_bytes`` (never
        those in ``keep``, which a running job reads); compact the usage records."""
        usage = [self.url(USAGE, name) for name in self.sizes(USAGE)]
        entries = self.entries()
        total = sum(e["size"] for e in entries.values())
        removed: list[str] = []
        for name in sorted(entries, key=lambda n: entries[n]["used"]):
            if total <= self.max_bytes:
                break
            if name not in keep:
                removed.append(name)
                total -= entries[name]["size"]
        self._remove([self.url(name) for name in removed])
        if removed or len(usage) > COMPACT_AFTER:  # one record for what is left, old ones go
            kept = {n: e["used"] for n, e in entries.items() if n not in set(removed)}
            self.write_json(USAGE, f"compacted-{uuid.uuid4().hex[:12]}",
                            {"time": 0, "entries": [], "used": kept})  # fmt: skip
            self._remove(usage)
        if removed:
            log.info("data cache: removed %d least recently used entries (over %.1f GB)",
                     len(removed), self.max_bytes / 1e9)  # fmt: skip
        return removed

    def clear(self) -> int:
        """Remove every entry and usage record; returns how many files went."""
        names = [self.url(kind, name) for kind in (*KINDS, USAGE) for name in self.sizes(kind)]
        self._remove(names)
        return len(names)

    def _remove(self, urls: list[str]) -> None:
        """Remove these files; one that another job removed first is no error."""
        if not urls:
            return
        fs, _ = storage.get_fs(urls[0])
        paths = [storage.get_fs(url)[1] for url in urls]
        try:
            storage.call(fs, urls[0], "rm", paths)
        except FileNotFoundError:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    storage.call(fs, urls[0], "rm_file", path)


def _modified(info: dict[str, Any]) -> float:
    """A listing entry's modification time in seconds (local ``mtime``, S3 ``LastModified``)."""
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or 0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


# The data cache of the job running in this thread: a context variable, not a process global,
# so that jobs run side by side in one process (a notebook, a launcher, the dashboard) each see
# their own. A new thread starts without one.
_ACTIVE: contextvars.ContextVar[DataCache | None] = contextvars.ContextVar(
    "brevpipe_data_cache", default=None
)


def configure(root: str | None, max_gb: float | None = None) -> DataCache | None:
    """Set the data cache of the jobs this thread runs (the runner does, from ``runtime``)."""
    cache = DataCache.from_settings(root, max_gb)
    _ACTIVE.set(cache)
    return cache


def active() -> DataCache | None:
    """The data cache :func:`configure` set in this thread, if any."""
    return _ACTIVE.get()
