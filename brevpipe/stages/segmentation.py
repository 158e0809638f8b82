"""Stages of the semantic segmentation pipeline (declared in pipelines/segmentation.yaml).

The sample table carries a ``mask_path`` per image (``dataset.masks=true``); masks are class
indices per pixel (``masks.classes`` by pixel value, or colours via ``masks.colors``), loaded,
resized and augmented exactly like their images.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.samples import summarize
from brevpipe.data.segmentation import MaskLoader
from brevpipe.engine import storage
from brevpipe.engine.checkpoint import Checkpoint
from brevpipe.engine.components import instantiate
from brevpipe.engine.runner import StageContext
from brevpipe.errors import ConfigError, DataError
from brevpipe.stages.classification import _raise_naming_bad_images, _seed, _usable, record_samples
from brevpipe.stages.classification import segmentation_metrics as pixel_metrics

log = logging.getLogger("brevpipe")
FEATURES = ("image", "mask")


def find_samples(
    ctx: StageContext,
    *,
    dataset: dict[str, Any],
    masks: dict[str, Any],
    rerun: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The images and their masks (``artifacts/samples.csv``) and the mask classes: those of
    ``masks.classes``, else the dataset's own (the built-in shapes know theirs)."""
    source = instantiate(dataset)
    samples = source.find_samples()
    if "mask_path" not in samples:
        raise ConfigError("pipeline=segmentation needs a mask per image: set dataset.masks=true "
                          "(and dataset.mask_url for a folder dataset).")  # fmt: skip
    classes = list(masks.get("classes") or getattr(source, "segmentation_classes", None) or [])
    if len(classes) < 2:
        raise ConfigError("masks.classes: list the mask classes by pixel value, background "
                          "first, e.g. masks.classes=[background,scratch,dent].")  # fmt: skip
    record_samples(ctx, samples, rerun)
    log.info("found %d images with masks; %d mask classes", len(samples), len(classes))
    return {"samples": samples, "mask_classes": classes}


def _pipeline(samples: pd.DataFrame, loader: ImageLoader, classes: list[str],
              masks: dict[str, Any], batch_size: int, **kwargs: Any) -> InputPipeline:  # fmt: skip
    mask_loader = MaskLoader(classes, colors=masks.get("colors"))
    return InputPipeline(samples, loader, mask_loader=mask_loader, batch_size=batch_size,
                         output_structure=FEATURES, **kwargs)  # fmt: skip


def train(
    ctx: StageContext,
    split_samples: pd.DataFrame,
    mask_classes: list[str],
    *,
    sampler: dict[str, Any],
    loader: dict[str, Any],
    augmenter: dict[str, Any],
    masks: dict[str, Any],
    model: dict[str, Any],
    trainer: dict[str, Any],
) -> dict[str, Any]:
    """Fit a per-pixel classifier on the train split, validating on devel."""
    import keras
    import tensorflow as tf

    image_loader: ImageLoader = instantiate(loader)
    train_samples = _usable(split_samples[split_samples["purpose"] == "train"], image_loader, ctx)
    devel_samples = _usable(split_samples[split_samples["purpose"] == "devel"], image_loader, ctx)
    if train_samples.empty:
        raise DataError("no training samples: check split.fractions and the dataset.")
    fit = instantiate(trainer)
    if fit.class_weight is not None:
        raise ConfigError("trainer.class_weight weighs whole images; it does not apply to "
                          "segmentation: drop it.")  # fmt: skip
    train_data = _pipeline(
        train_samples, image_loader, mask_classes, masks, fit.batch_size,
        augmenter=instantiate(augmenter), sampler=instantiate(sampler, seed=_seed(ctx, "sampler")),
        seed=_seed(ctx, "augmenter"),
    )  # fmt: skip
    keras.utils.set_random_seed(ctx.seed)
    with fit.scope():
        net = instantiate(model)(input_shape=image_loader.output_shape,
                                 num_classes=len(mask_classes))  # fmt: skip
        fit.compile(net, len(train_data), "segmentation")
    devel_data = (
        _pipeline(devel_samples, image_loader, mask_classes, masks, fit.batch_size)
        if len(devel_samples)
        else None
    )
    checkpoint = Checkpoint(storage.join(ctx.url, "checkpoint"), ctx.key)
    ctx.cleanups.append(checkpoint.remove)
    try:
        fit.fit(net, train_data, devel_data, on_epoch=ctx.add_epoch, verbose=ctx.verbose,
                checkpoint=checkpoint, task="segmentation",
                stop_url=ctx.job.bucket_url)  # fmt: skip
        if checkpoint.restored_epoch:
            ctx.notes["resumed_after_epoch"] = checkpoint.restored_epoch
    except tf.errors.InvalidArgumentError as exc:
        _raise_naming_bad_images(exc, split_samples, image_loader)
        raise
    return {"model": net, "classes": mask_classes}


def evaluate(
    ctx: StageContext,
    split_samples: pd.DataFrame,
    model: Any,
    classes: list[str],
    *,
    loader: dict[str, Any],
    masks: dict[str, Any],
    batch_size: int,
    purposes: list[str],
    overlay_count: int = 16,
) -> dict[str, Any]:
    """Per purpose: pixel accuracy, IoU and Dice per class and their means. Per image rows in
    ``artifacts/predictions.csv``; ``artifacts/segmentation_overlays.png`` shows the first
    devel images with their true and predicted masks."""
    from brevpipe.reports.report import overlay, thumbnails

    image_loader: ImageLoader = instantiate(loader)
    evaluation: dict[str, Any] = {"classes": classes, "task": "segmentation"}
    rows = []
    for purpose in purposes:
        subset = _usable(split_samples[split_samples["purpose"] == purpose], image_loader, ctx)
        if subset.empty:
            continue
        data = _pipeline(subset, image_loader, classes, masks, batch_size)
        # images shown: spread over the (path-sorted, so category-grouped) subset
        shown_rows = np.unique(np.linspace(0, len(subset) - 1, overlay_count).astype(int))
        images, truths, predictions = [], [], []
        for batch_images, batch_masks in data.numpy_iterator():
            scores = np.asarray(model.predict_on_batch(batch_images))
            first = sum(len(t) for t in truths)
            keep = shown_rows[(shown_rows >= first) & (shown_rows < first + len(batch_images))]
            images.append(batch_images[keep - first])
            truths.append(batch_masks[..., 0])
            predictions.append(scores.argmax(axis=-1))
        truth, predicted = np.concatenate(truths), np.concatenate(predictions)
        scalars = pixel_metrics(truth, predicted, classes)
        for name, value in scalars.items():
            ctx.add_metric(f"{purpose}/{name}", value)
        evaluation[purpose] = {"scalars": scalars, "count": len(subset)}
        for path, t, p in zip(subset["path"], truth, predicted, strict=True):
            one = pixel_metrics(t, p, classes)
            rows.append({"path": path, "purpose": purpose, "pixel_accuracy": one["pixel_accuracy"],
                         "mean_iou": one["mean_iou"], "mean_dice": one["mean_dice"]})  # fmt: skip
        if purpose == "devel" or "overlays" not in evaluation:
            pixels = _display(np.concatenate(images))
            pairs = np.stack([overlay(pixels, truth[shown_rows]),
                              overlay(pixels, predicted[shown_rows])], axis=1)  # fmt: skip
            captions = [f"{kind} {i}" for i in shown_rows for kind in ("true", "predicted")]
            png = thumbnails(pairs.reshape(-1, *pairs.shape[2:]), captions)
            url = ctx.job.artifact_path("segmentation_overlays.png")
            storage.write_bytes(url, png)
            evaluation["overlays"] = {"url": url, "purpose": purpose}
    storage.write_bytes(
        ctx.job.artifact_path("predictions.csv"), pd.DataFrame(rows).to_csv(index=False).encode()
    )
    return {"evaluation": evaluation}


def _display(images: np.ndarray) -> np.ndarray:
    """Model inputs stretched to 0..255 pixels for pictures (whatever the loader's rescale)."""
    low, high = images.min(), images.max()
    if high - low < 1e-6:
        return np.zeros_like(images, dtype=np.uint8)
    return ((images - low) / (high - low) * 255).astype(np.uint8)


def report(
    ctx: StageContext,
    split_samples: pd.DataFrame,
    evaluation: dict[str, Any],
    *,
    pivot: dict[str, list[str]],
) -> dict[str, Any]:
    """Charts (dataset, training curves, IoU and Dice per class), the pivot summary, the
    overlays and the self-contained ``artifacts/report.html``."""
    from brevpipe.reports import charts as vl
    from brevpipe.reports.report import pivot as pivot_table
    from brevpipe.reports.report import render_html

    specs = {"dataset_summary": vl.dataset_summary(summarize(split_samples)["by_purpose_category"])}
    if ctx.job.history:
        specs["training_curves"] = vl.training_curves(ctx.job.history)
    for purpose in ("devel", "test"):
        if purpose in evaluation:
            specs[f"iou_dice_{purpose}"] = vl.per_class_scores(
                evaluation[purpose]["scalars"], ["iou", "dice"], purpose
            )
    for name, spec in specs.items():
        storage.write_json(ctx.job.artifact_path("charts", f"{name}.vl.json"), spec)
    pivot_data = pivot_table(split_samples, pivot["rows"], pivot["cols"])
    storage.write_json(ctx.job.artifact_path("samples_pivot.json"), pivot_data)
    images = {}
    if "overlays" in evaluation and storage.exists(evaluation["overlays"]["url"]):
        title = f"True and predicted masks ({evaluation['overlays']['purpose']})"
        images[title] = storage.read_bytes(evaluation["overlays"]["url"])
    job = ctx.job
    page = render_html(
        title=f"brevpipe job {job.id}",
        summary={"pipeline": job.pipeline, "job": job.id, "bucket": job.bucket_url,
                 "started": job.start_time, "seed": job.seed, "samples": len(split_samples),
                 "mask classes": ", ".join(evaluation["classes"])},  # fmt: skip
        metrics=job.metrics, charts=specs, pivot_data=pivot_data, images=images,
    )  # fmt: skip
    url = job.artifact_path("report.html")
    storage.write_bytes(url, page.encode())
    return {"report": {"url": url, "charts": sorted(specs), "atlases": sorted(images)}}
