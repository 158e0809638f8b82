"""Sample discovery: one row per image found under folder-per-class URLs."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd

from brevpipe.config.compose import stable_hash
from brevpipe.errors import ConfigError, DataError
from brevpipe.io import cache as data_cache
from brevpipe.io import storage
from brevpipe.io.artifacts import table_from_csv, table_to_csv

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SAMPLE_COLUMNS = ["path", "category", "folder", "dataset", "dataset_id", "etag"]
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
_CAT_CHUNK = 64


def _md5_of_files(fs: Any, paths: Sequence[str], local: bool) -> list[str]:
    """MD5 of each file's bytes, read concurrently (threads here, ``fs.cat`` batches remotely)."""
    if local:

        def md5_local(path: str) -> str:
            with open(path, "rb") as f:
                return hashlib.md5(f.read(), usedforsecurity=False).hexdigest()

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(md5_local, paths))
    digests = []
    for start in range(0, len(paths), _CAT_CHUNK):
        chunk = list(paths[start : start + _CAT_CHUNK])
        # one concurrent batch of requests on async file systems, within storage.timeout_s
        contents = storage.call(fs, chunk[0], "cat", chunk)
        digests += [hashlib.md5(contents[p], usedforsecurity=False).hexdigest() for p in chunk]
    return digests


def _content_hashes(
    fs: Any, url: str, files: Sequence[tuple[str, Mapping[str, Any]]], local: bool
) -> list[str]:
    """The MD5 of each listed file (path, info) whose store gives none: from the data cache
    (:mod:`brevpipe.io.cache`) when the same files, sizes and times were hashed before,
    else read and hashed here."""
    if not files:
        return []
    cache = data_cache.active()
    listing = [(path, info.get("size"), str(info.get("mtime") or info.get("ETag")
                                            or info.get("LastModified") or ""))
               for path, info in files]  # fmt: skip
    key = stable_hash([url, listing], length=32)
    hit = (cache.read_json(data_cache.LISTINGS, key) or {}) if cache is not None else {}
    digests = hit.get("md5") if isinstance(hit, dict) else None
    if isinstance(digests, list) and len(digests) == len(files) and \
            all(isinstance(d, str) and _PLAIN_MD5.match(d) for d in digests):  # fmt: skip
        cache.record_use([f"{data_cache.LISTINGS}/{key}.json"])
        return digests
    digests = _md5_of_files(fs, [path for path, _ in files], local)
    if cache is not None:
        cache.write_json(data_cache.LISTINGS, key, {"url": url, "md5": digests})
    return digests


def _plain_md5_etag(info: Mapping[str, Any]) -> str | None:
    """The object store's ETag when it is a plain MD5 of the content (not a multipart ETag)."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
    return etag if _PLAIN_MD5.match(etag) else None


def map_category(
    folder: str,
    class_mapping: Mapping[str, Any] | None,
    classes: Iterable[str] | None,
) -> tuple[str, ...]:
    """The labels of an image in ``folder`` (relative path): the leaf folder name, mapped.

    ``class_mapping`` keys may be a leaf folder name or a relative folder path; a value may be
    one label or a list of labels (multi-label). ``classes`` keeps only the listed labels.
    """
    leaf = folder.rsplit("/", 1)[-1]
    mapped: Any = leaf
    if class_mapping:
        mapped = class_mapping.get(folder, class_mapping.get(leaf, leaf))
    labels = (mapped,) if isinstance(mapped, str) else tuple(str(m) for m in mapped or ())
    if classes is not None:
        allowed = set(classes)
        labels = tuple(label for label in labels if label in allowed)
    return labels


def find_samples(
    urls: str | Sequence[str],
    *,
    dataset: str = "dataset",
    classes: Sequence[str] | None = None,
    class_mapping: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Find the images under one or more folder-per-class URLs.

    Returns one row per image with the columns ``path`` (URL), ``category`` (tuple of labels),
    ``folder``, ``dataset``, ``dataset_id`` and ``etag`` (a content hash), sorted by path.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise DataError("no dataset URL given: set dataset.url to a folder-per-class tree.")
    rows: list[dict[str, Any]] = []
    for url in urls:
        rows += _samples_under(storage.normalize(str(url)), dataset, classes, class_mapping)
    if not rows:
        raise DataError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under "
            f"{', '.join(map(str, urls))}; expected <url>/<class>/<image> (check dataset.url, "
            "dataset.classes and dataset.class_mapping)."
        )
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS).sort_values("path", ignore_index=True)


def _samples_under(
    url: str, dataset: str, classes: Sequence[str] | None,
    class_mapping: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The sample rows of one folder-per-class URL (unsorted)."""
    fs, root = storage.get_fs(url)
    local = storage.is_local(url)
    try:
        found = (storage.call(fs, url, "find", root, detail=True)
                 if storage.call(fs, url, "isdir", root) else None)  # fmt: skip
    except (FileNotFoundError, PermissionError) as exc:
        raise DataError(f"cannot list dataset URL {url}: {exc}; check dataset.url.") from exc
    if found is None:
        raise DataError(
            f"dataset URL {url} does not exist or is not a folder; set dataset.url to a "
            "folder with one sub-folder of images per class."
        )
    images = sorted(
        (path, info)
        for path, info in found.items()
        if path.lower().endswith(IMAGE_EXTENSIONS) and info.get("type", "file") == "file"
    )
    entries = []
    for path, info in images:
        relative = path[len(root.rstrip("/")) :].strip("/")
        folder = relative.rsplit("/", 1)[0] if "/" in relative else ""
        if not folder:
            continue  # an image at the root has no class folder
        category = map_category(folder, class_mapping, classes)
        if category:
            entries.append((path, info, folder, category))
    etags = [_plain_md5_etag(info) for _, info, _, _ in entries]
    missing = [i for i, etag in enumerate(etags) if etag is None]
    hashed = _content_hashes(fs, url, [entries[i][:2] for i in missing], local)
    for i, digest in zip(missing, hashed, strict=True):
        etags[i] = digest
    dataset_id = stable_hash(url, length=12)
    return [
        {"path": path if local else fs.unstrip_protocol(path), "category": category,
         "folder": folder, "dataset": dataset, "dataset_id": dataset_id, "etag": etag}
        for (path, _, folder, category), etag in zip(entries, etags, strict=True)
    ]  # fmt: skip

@dataclass
class FolderDataset:
    """A dataset given as one or more folder-per-class URLs (local, ``s3://``, ``memory://``).

    ``masks``: each image has a segmentation mask at ``<mask_url>/<folder>/<stem><mask_suffix>``
    (a mirror tree of mask images or ``.json`` annotations; beside the image when ``mask_url``
    is null), listed in the ``mask_path`` column.

    Settings:
    ``url``: one folder-per-class URL or a list of them
    ``name``: the dataset's name in the sample table
    ``classes``: keep only these classes (folder names after mapping)
    ``class_mapping``: {folder: label} or {folder: [label, ...]} (multi-label)
    ``mask_url``: a mirror tree of masks (null: beside the images)
    ``mask_suffix``: file name ending of a mask, such as _mask.png or .json
    ``masks``: each image has a segmentation mask (pipeline=segmentation sets it)
    """

    url: str | Sequence[str]
    name: str = "folder"
    classes: Sequence[str] | None = None
    class_mapping: Mapping[str, Any] | None = None
    masks: bool = False
    mask_url: str | None = None
    mask_suffix: str = ".png"

    def find_samples(self) -> pd.DataFrame:
        samples = find_samples(
            self.url, dataset=self.name, classes=self.classes, class_mapping=self.class_mapping
        )
        if self.masks:
            from brevpipe.data.segmentation import attach_masks

            if not self.mask_url:  # masks beside the images: they are not samples themselves
                if self.mask_suffix.startswith("."):
                    raise ConfigError(f"dataset.mask_suffix={self.mask_suffix!r} with masks beside "
                                      "the images: use a distinct suffix such as _mask.png, or "
                                      "set dataset.mask_url to a mirror tree.")  # fmt: skip
                keep = ~samples["path"].str.endswith(self.mask_suffix)
                samples = samples[keep].reset_index(drop=True)
            samples = attach_masks(samples, self.mask_url, self.mask_suffix)
        return samples


# -- sample tables as CSV (the category tuple travels as a JSON list) ------------------------
samples_to_csv = table_to_csv  # the sample table's CSV is the engine's table format
samples_from_csv = table_from_csv


def summarize(samples: pd.DataFrame) -> dict[str, Any]:
    """Counts per purpose and category, and a fingerprint of the sample table."""
    label = samples["category"].map(lambda c: "+".join(c))
    summary: dict[str, Any] = {"count": len(samples)}
    if "purpose" in samples:
        summary["by_purpose"] = samples["purpose"].value_counts().sort_index().to_dict()
        summary["by_purpose_category"] = {
            purpose: label[samples["purpose"] == purpose].value_counts().sort_index().to_dict()
            for purpose in sorted(samples["purpose"].unique())
        }
    summary["by_category"] = label.value_counts().sort_index().to_dict()
    summary["fingerprint"] = fingerprint(samples)
    return summary


def fingerprint(samples: pd.DataFrame) -> str:
    """A digest of which images there are and what they hold: (path, etag) pairs."""
    return stable_hash(sorted(zip(samples["path"], samples["etag"], strict=True)))
