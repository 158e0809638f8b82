"""Dataset lineage: which exact data a job trained and evaluated on, as one digest.

The digest covers the sample table (each image's path inside its dataset folder, its content
hash and its labels) and the split (each image's purpose). Paths are taken relative to the
dataset's folder and content hashes are MD5s of the bytes (the listing's), so the same files
listed from a local folder and from an S3 bucket give the same digest; changing, adding,
renaming or relabelling one file, or moving it to another purpose, changes it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from brevpipe.config.compose import stable_hash

DIGEST_LENGTH = 16


def relative_paths(samples: pd.DataFrame) -> list[str]:
    """Each sample's path inside its dataset folder: ``<class folder>/<file name>``."""
    names = samples["path"].map(lambda p: str(p).rstrip("/").rsplit("/", 1)[-1])
    folders = samples["folder"] if "folder" in samples else pd.Series([""] * len(samples))
    return [f"{folder}/{name}" if folder else name
            for folder, name in zip(folders, names, strict=True)]  # fmt: skip


def sources(samples: pd.DataFrame) -> list[str]:
    """The dataset folders the samples were listed from."""
    roots = {
        str(path)[: -len(relative) - 1] if str(path).endswith("/" + relative) else str(path)
        for path, relative in zip(samples["path"], relative_paths(samples), strict=True)
    }
    return sorted(roots)


def dataset_record(split_samples: pd.DataFrame) -> dict[str, Any]:
    """output.json's ``dataset`` section: ``digest`` (samples and split together), ``samples``
    and ``split`` (each alone), ``count`` and ``source`` (the dataset folders)."""
    relative = relative_paths(split_samples)
    etags = split_samples["etag"].fillna("").astype(str).tolist() if "etag" in split_samples \
        else [""] * len(split_samples)  # fmt: skip
    labels = [sorted(map(str, c)) for c in split_samples["category"]]
    table = sorted(zip(relative, etags, labels, strict=True))
    purposes = split_samples["purpose"].astype(str).tolist() if "purpose" in split_samples \
        else [""] * len(split_samples)  # fmt: skip
    split = sorted(zip(relative, purposes, strict=True))
    samples_digest = stable_hash(table, DIGEST_LENGTH)
    split_digest = stable_hash(split, DIGEST_LENGTH)
    return {
        "digest": stable_hash([samples_digest, split_digest], DIGEST_LENGTH),
        "samples": samples_digest,
        "split": split_digest,
        "count": len(split_samples),
        "source": sources(split_samples),
    }
