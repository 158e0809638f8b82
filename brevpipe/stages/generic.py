"""Stages that do not depend on the task: the split and the export.

Pipelines name them by their registered targets, ``brevpipe.stages.classification.split_samples``
and ``brevpipe.stages.classification.export`` (the segmentation pipeline too), which
:mod:`brevpipe.stages.classification` re-exports.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pandas as pd

from brevpipe import __version__
from brevpipe.config.components import instantiate
from brevpipe.data.encoder import OneHotEncoder
from brevpipe.data.lineage import dataset_record
from brevpipe.data.loader import ImageLoader
from brevpipe.data.samples import samples_from_csv, summarize
from brevpipe.data.split import SampleSplit, identification_table
from brevpipe.engine.context import StageContext
from brevpipe.io import storage


def split_samples(
    ctx: StageContext, samples: pd.DataFrame, *, split: dict[str, Any]
) -> dict[str, Any]:
    """Assign purposes; keep assignments from an earlier split of this job or ``reuse_url``."""
    splitter: SampleSplit = instantiate({"_target_": "split:default", **split}, seed=ctx.seed)
    identification_url = ctx.bucket.split
    previous_url = splitter.reuse_url or (
        identification_url if storage.exists(identification_url) else None
    )
    previous = samples_from_csv(storage.read_bytes(previous_url)) if previous_url else None
    assigned = splitter.assign(samples, previous)
    persisted = identification_table(assigned, splitter.uniqueness, previous)
    storage.write_bytes(identification_url, persisted.to_csv(index=False).encode())
    ctx.set_section("samples", summarize(assigned))
    ctx.set_section("dataset", dataset_record(assigned))
    return {"split_samples": assigned}


def export(
    ctx: StageContext, model: Any, classes: list[str], *, loader: dict[str, Any],
    encoder: dict[str, Any] | None = None, task: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``artifacts/model/``: ``model.keras``, ``saved_model.tar.gz`` and ``model.json``.
    ``task``: ``single_label``, ``multi_label`` (default: from the encoder) or
    ``segmentation`` (``classes`` are then the mask classes by pixel value)."""
    image_loader: ImageLoader = instantiate(loader)
    label_encoder = instantiate(encoder) if encoder else OneHotEncoder()
    task = task or ("multi_label" if label_encoder.multi_label else "single_label")
    local = Path(ctx.temp_path("export", "model.keras")).parent
    model.save(local / "model.keras")
    model.export(str(local / "saved_model"), verbose=False)
    metadata = {
        "classes": classes,
        "task": task,
        "multi_label": task == "multi_label",
        "threshold": float(getattr(label_encoder, "threshold", 0.0)) or None,
        "input_shape": list(image_loader.output_shape),
        "preprocessing": image_loader.metadata(),
        "recipe": image_loader.recipe(),  # the same as numbers: TensorFlow alone can score
        "brevpipe_version": __version__,
        "job_id": ctx.job_id,
    }
    (local / "model.json").write_text(json.dumps(metadata, indent=2))
    archive = local / "saved_model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # all a predictor needs: load_predictor(url)
        tar.add(local / "saved_model", arcname="saved_model")
        tar.add(local / "model.json", arcname="model.json")
    model_url, archive_url = ctx.bucket.model, ctx.bucket.model_archive
    storage.upload(local / "model.keras", storage.join(model_url, "model.keras"))
    storage.upload(archive, archive_url)
    info = {
        "format": "keras+saved_model",
        "keras_url": storage.join(model_url, "model.keras"),
        "archive_url": archive_url,
        "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        **metadata,
    }
    storage.write_bytes(storage.join(model_url, "model.json"), json.dumps(info, indent=2).encode())
    ctx.set_section("model", info)
    return {"model_info": info}
