"""Decoded, resized images in the data cache that jobs share (:mod:`brevpipe.io.cache`).

An entry holds what the loader's decode gives for one image, before any augmentation, as raw
array bytes: uint8 when every value is a whole number in 0..255 (lossless), float32 otherwise.
It is keyed by the image's content hash (the sample table's ``etag``) and by the loader's
settings less the rescaling, which comes later; the decoding code and TensorFlow's version are
in the key too, so that an upgrade never reads what an older decoder wrote.

tf.data then reads entries from local files that this process owns (hard links into the
cache, or copies), so another job evicting an entry never pulls it from under a running one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brevpipe.config.compose import stable_hash
from brevpipe.data.mirror import local_copies, mirror_folder
from brevpipe.io import cache as data_cache

log = logging.getLogger("brevpipe")
FORMAT = 1  # the entry format; a change makes new keys
DTYPES = {"u8": np.dtype(np.uint8), "f32": np.dtype("<f4")}
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_DECODING_CODE = ("decode.py", "loader.py")  # whose source is part of the key


@dataclass
class CachedImages:
    """Per sample row: a local file of raw array bytes and whether they are uint8."""

    files: list[str]
    is_uint8: list[bool]
    hits: int
    decoded: int


def loader_key(loader: Any) -> str:
    """The key of a loader's decoded images: its settings (not ``rescale``), the decoding
    code and TensorFlow's version, the entry format."""
    import tensorflow as tf

    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / name).read_bytes() for name in _DECODING_CODE))
    settings = {k: v for k, v in loader.metadata().items() if k != "rescale"}
    return stable_hash({"loader": settings, "shape": list(loader.output_shape), "format": FORMAT,
                        "code": code.hexdigest(), "tensorflow": tf.__version__})  # fmt: skip


def content_name(etag: str) -> str:
    """A file name from a content hash: itself when it is an MD5, else a digest of it (a
    sample table is user input: no path ever comes from it)."""
    etag = str(etag).lower()
    return etag if _MD5.match(etag) else hashlib.sha256(etag.encode()).hexdigest()[:32]


def entry_bytes(image: np.ndarray) -> tuple[str, bytes]:
    """``(suffix, raw bytes)`` of one decoded image: uint8 when that is lossless."""
    whole = np.all((image >= 0) & (image <= 255) & (image == np.round(image)))
    kind = "u8" if whole else "f32"
    return kind, np.ascontiguousarray(image, DTYPES[kind]).tobytes()


def cached_images(
    cache: data_cache.DataCache, samples: pd.DataFrame, loader: Any,
    decode_rows: Callable[[pd.DataFrame], np.ndarray],
) -> CachedImages | None:  # fmt: skip
    """Every row's decoded image through the cache: the rows without an entry are decoded
    with ``decode_rows`` (samples -> images, the loader's own decode) and written. None when
    rows have no content hash (a sample table without ``etag``): those are not cached."""
    if "etag" not in samples or samples["etag"].isna().any():
        return None
    started = time.perf_counter()
    folder = storage_folder(loader)
    pixels = int(np.prod(loader.output_shape))
    try:
        present = cache.sizes(folder)
    except Exception as exc:  # noqa: BLE001 - an optimisation only: read the images as usual
        log.warning("the data cache %s cannot be listed (%s): reading the images without it",
                    cache.root, exc)  # fmt: skip
        return None
    names = [content_name(e) for e in samples["etag"]]
    found: dict[str, str] = {}  # content name -> suffix of a complete entry
    for path, size in present.items():
        stem, _, suffix = path.rpartition("/")[2].partition(".")
        if suffix in DTYPES and size == pixels * DTYPES[suffix].itemsize:
            found[stem] = suffix
    first_row = {name: row for row, name in reversed(list(enumerate(names)))}
    missing = sorted({name for name in names if name not in found})
    fresh = _decode(folder, missing, samples, first_row, decode_rows, found)
    cache.write_many(fresh)
    entries = [_relative(folder, name, found[name]) for name in names]
    local, vanished = _local_files(cache, sorted(set(entries)), fresh)
    if vanished:  # evicted by another job since the listing: decoded here, kept privately
        again = [entry.rpartition("/")[2].partition(".")[0] for entry in vanished]
        fresh.update(_decode(folder, again, samples, first_row, decode_rows, found))
        local.update(_local_files(cache, vanished, fresh)[0])
    _bookkeeping(cache, sorted(set(entries)), bool(fresh))
    log.info("input pipeline: %d images ready in %.1f s (%d from the data cache %s, %d decoded)",
             len(names), time.perf_counter() - started, len(set(names)) - len(missing),
             cache.root, len(missing))  # fmt: skip
    return CachedImages([local[e] for e in entries], [found[n] == "u8" for n in names],
                        len(set(names)) - len(missing), len(missing))  # fmt: skip


def _bookkeeping(cache: data_cache.DataCache, entries: list[str], wrote: bool) -> None:
    """Record the use of ``entries``; after writing, evict past the cap. Other jobs do the
    same at the same time: a failure here is a warning, never the job's end."""
    try:
        cache.record_use(entries)
        if wrote:
            cache.evict(keep=set(entries))
    except Exception as exc:  # noqa: BLE001 - the cache is an optimisation only
        log.warning("data cache %s: cannot record use or evict (%s)", cache.root, exc)


def _decode(
    folder: str, names: list[str], samples: pd.DataFrame, first_row: dict[str, int],
    decode_rows: Callable[[pd.DataFrame], np.ndarray], found: dict[str, str],
) -> dict[str, bytes]:  # fmt: skip
    """Entries (relative path -> bytes) of these content names, decoded from their rows."""
    if not names:
        return {}
    images = decode_rows(samples.iloc[[first_row[name] for name in names]])
    fresh = {}
    for name, image in zip(names, images, strict=True):
        found[name], data = entry_bytes(image)
        fresh[_relative(folder, name, found[name])] = data
    return fresh


def storage_folder(loader: Any) -> str:
    return f"{data_cache.IMAGES}/{loader_key(loader)}"


def _relative(folder: str, name: str, suffix: str) -> str:
    return f"{folder}/{name[:2]}/{name}.{suffix}"


def _local_files(
    cache: data_cache.DataCache, entries: list[str], fresh: dict[str, bytes]
) -> tuple[dict[str, str], list[str]]:
    """A local file of this process for each entry (see the module's docstring), and the
    entries that are gone from the cache."""
    own = mirror_folder(kept=False) / "decoded"
    out: dict[str, str] = {}
    vanished: list[str] = []
    remote = [e for e in entries if not cache.local and e not in fresh]
    failures: dict[str, str] = {}
    copies = local_copies([cache.url(e) for e in remote], remote, failures=failures)
    for entry, path in zip(remote, copies, strict=True):
        if cache.url(entry) in failures:
            vanished.append(entry)
        else:
            out[entry] = path
    for entry in entries:
        if entry in vanished:
            continue
        if entry in out:
            continue
        target = own / entry
        out[entry] = str(target)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry in fresh:
            target.write_bytes(fresh[entry])
            continue
        try:
            os.link(cache.url(entry), target)
        except FileNotFoundError:
            vanished.append(entry)
            del out[entry]
        except OSError:  # another file system: a copy
            try:
                shutil.copyfile(cache.url(entry), target)
            except FileNotFoundError:
                vanished.append(entry)
                del out[entry]
    return out, vanished
