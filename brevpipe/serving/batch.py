"""Scoring many images with an exported model: which files, the scores, the output file.

IMAGES are files, globs or folders on any fsspec file system. Images go through the model's own
:class:`ImageLoader` (the one training used), so the preprocessing cannot drift. The command
line is :mod:`brevpipe.commands.predict`; the model comes from :mod:`brevpipe.serving.resolve`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from brevpipe.errors import BrevpipeError, ConfigError, DataError
from brevpipe.io import storage

if TYPE_CHECKING:
    import pandas as pd

    from brevpipe.serving.predictor import Predictor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # as training (samples.py)
FORMATS = ("csv", "json")
_GLOB_CHARS = "*?["

Progress = Callable[[int, int], None]


# -- the images ----------------------------------------------------------------------------
def expand_images(patterns: Sequence[str]) -> list[str]:
    """Image URLs for files, globs (``data/*.png``, ``s3://b/x/**/*.jpg``) and folders.

    Folders and globs yield the files with an image extension (png, jpg, jpeg, bmp, tif, tiff,
    any case), sorted; a file named directly is taken as it is. Order follows the patterns;
    duplicates are dropped. A pattern that matches nothing is an error naming it.
    """
    urls: list[str] = []
    for pattern in patterns:
        found = _expand_one(pattern)
        if not found:
            raise DataError(f"no images match {pattern!r}: check the path (folders and globs "
                            f"take files ending in {', '.join(IMAGE_EXTENSIONS)}).")  # fmt: skip
        urls.extend(found)
    return list(dict.fromkeys(urls))


def _expand_one(pattern: str) -> list[str]:
    fs, path = storage.get_fs(pattern)
    local = storage.is_local(pattern)

    def url(p: str) -> str:
        return p if local else fs.unstrip_protocol(p)

    def is_image(p: str) -> bool:
        return p.lower().endswith(IMAGE_EXTENSIONS)

    try:
        if any(c in path for c in _GLOB_CHARS):
            matches = fs.glob(path, detail=True)
            return sorted(url(p) for p, info in matches.items()
                          if info.get("type") != "directory" and is_image(p))  # fmt: skip
        if fs.isdir(path):
            files = fs.find(path)
            return sorted(url(p) for p in files if is_image(p))
        if fs.isfile(path):
            return [url(path)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise DataError(f"cannot list {pattern!r}: {exc}") from None
    return []


# -- scoring -------------------------------------------------------------------------------
def predict_images(
    predictor: Predictor,
    urls: Sequence[str],
    batch_size: int = 32,
    *,
    on_error: str = "raise",
    progress: Progress | None = None,
) -> pd.DataFrame:
    """One row per image: ``path``, ``predicted``, ``score_<class>``... (``predict_urls``).

    A file that cannot be read or decoded raises a :class:`DataError` naming it; with
    ``on_error="skip"`` it is left out and listed in ``table.attrs["skipped"]`` as
    ``(url, reason)``. ``progress(done, total)`` is called after every batch.
    """
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={on_error!r}: use raise or skip.")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size}: use 1 or more.")
    urls = list(urls)
    if not urls:
        raise DataError("no images to score.")
    try:
        table = _score(predictor, urls, batch_size, progress)
        table.attrs["skipped"] = []
        return table
    except BrevpipeError:
        raise
    except Exception:
        bad = predictor.loader.find_unreadable(urls)  # which file, and why
        if not bad:
            raise
    if on_error == "raise":
        listing = "; ".join(f"{url} ({reason})" for url, reason in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} image(s) cannot be decoded: {listing}{more}. Fix or remove "
                        "them, or pass --on-error skip (on_error='skip') to leave them out.")
    skipped = {url for url, _ in bad}
    keep = [u for u in urls if u not in skipped]
    if not keep:
        raise DataError(f"none of the {len(urls)} images can be decoded (first: {bad[0][0]}: "
                        f"{bad[0][1]}).")  # fmt: skip
    table = _score(predictor, keep, batch_size, progress)
    table.attrs["skipped"] = bad
    return table


def _score(predictor: Predictor, urls: list[str], batch_size: int,
           progress: Progress | None) -> pd.DataFrame:  # fmt: skip
    """``predict_urls`` per file system (a batch is read through one), rows in ``urls`` order."""
    import pandas as pd

    groups: dict[str, list[int]] = {}  # protocol -> positions in urls
    for i, url in enumerate(urls):
        groups.setdefault(storage.protocol_of(url), []).append(i)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, len(urls))

    step(0)
    tables = []
    for positions in groups.values():
        table = predictor.predict_urls([urls[i] for i in positions], batch_size=batch_size,
                                       progress=step)  # fmt: skip
        table.index = positions
        tables.append(table)
    return tables[0] if len(tables) == 1 else pd.concat(tables).sort_index()


# -- the output ----------------------------------------------------------------------------
def format_table(table: pd.DataFrame, fmt: str) -> bytes:
    """The table as CSV (header row) or JSON (a list of records)."""
    if fmt == "json":
        records = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                   for row in table.to_dict(orient="records")]  # fmt: skip
        return (json.dumps(records, indent=2) + "\n").encode()
    return table.to_csv(index=False).encode()


def check_destination(url: str) -> str:
    """The absolute ``--output`` URL, checked before any scoring: not a folder, and for remote
    storage reachable with the credentials at hand (a ConfigError naming it otherwise)."""
    url = storage.normalize(url)
    if storage.is_local(url):
        if Path(url).is_dir():
            raise ConfigError(f"--output {url} is a folder: give a file name such as "
                              f"{url}/predictions.csv.")  # fmt: skip
        return url
    try:
        fs, path = storage.get_fs(url)
        bucket = path.split("/", 1)[0]
        found = storage.call(fs, url, "exists", bucket)
    except BrevpipeError:
        raise
    except PermissionError:  # credentials scoped to a prefix may not see the bucket: go on
        return url  # (if the write fails after all, the results are kept in a local file)
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint: name them
        found, problem = False, f"{type(exc).__name__}: {exc}"
    else:
        problem = f"its bucket {bucket!r} does not exist or cannot be seen"
    if not found:
        raise ConfigError(f"cannot write --output {url}: {problem}; check the bucket and the "
                          "credentials (AWS_* variables), or write to a local file.")  # fmt: skip
    return url


def write_output(url: str, data: bytes, fmt: str, rows: int) -> None:
    """Write the results to ``url``; if that fails now, keep them in a local file and say so
    in the :class:`ConfigError` (scores are never lost)."""
    try:
        storage.write_bytes(url, data)
    except Exception as exc:  # noqa: BLE001 - whatever storage raises, keep the results
        keep = Path(f"brevpipe-predictions-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}").resolve()
        keep.write_bytes(data)
        raise ConfigError(f"cannot write {url} ({type(exc).__name__}: {exc}); the {rows} "
                          f"results are in {keep}.") from None  # fmt: skip
