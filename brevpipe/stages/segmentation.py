"""Stages of the semantic segmentation pipeline (declared in conf/pipeline/segmentation.yaml).

The sample table carries a ``mask_path`` per image (``dataset.masks=true``); masks are class
indices per pixel (``masks.classes`` by pixel value, or colours via ``masks.colors``), loaded,
resized and augmented exactly like their images. The split and the export are the generic
stages (:mod:`brevpipe.stages.generic`); the rest of what stages share is in
:mod:`brevpipe.stages.common`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from brevpipe.config.components import instantiate
from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.segmentation import MaskLoader
from brevpipe.engine.context import StageContext
from brevpipe.errors import ConfigError
from brevpipe.io import storage
from brevpipe.reports import charts
from brevpipe.reports.metrics import segmentation_metrics
from brevpipe.reports.report import overlay, thumbnails
from brevpipe.stages import common

# The stage functions, registered as stage:segmentation.<name> (config/components.py)
__all__ = ["find_samples", "train", "evaluate", "report"]
log = logging.getLogger("brevpipe")
FEATURES = ("image", "mask")
ROW_METRICS = ("pixel_accuracy", "mean_iou", "mean_dice")  # per image, in predictions.csv
WORST_SHOWN = 12  # per purpose: the lowest-IoU images, drawn with their masks (``overlay`` column)


def find_samples(
    ctx: StageContext, *, dataset: dict[str, Any], masks: dict[str, Any],
    rerun: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The images and their masks (``artifacts/samples.csv``) and the mask classes: those of
    ``masks.classes``, else the dataset's own (the built-in shapes know theirs)."""
    source = common.dataset_component(ctx, dataset)
    samples = source.find_samples()
    if "mask_path" not in samples:
        raise ConfigError("pipeline=segmentation needs a mask per image: set dataset.masks=true "
                          "(and dataset.mask_url for a folder dataset).")  # fmt: skip
    classes = list(masks.get("classes") or getattr(source, "segmentation_classes", None) or [])
    if len(classes) < 2:
        raise ConfigError("masks.classes: list the mask classes by pixel value, background "
                          "first, e.g. masks.classes=[background,scratch,dent].")  # fmt: skip
    common.record_samples(ctx, samples, rerun)
    log.info("found %d images with masks; %d mask classes", len(samples), len(classes))
    return {"samples": samples, "mask_classes": classes}


def _pipeline(samples: pd.DataFrame, loader: ImageLoader, classes: list[str],
              masks: dict[str, Any], batch_size: int, **kwargs: Any) -> InputPipeline:  # fmt: skip
    mask_loader = MaskLoader(classes, colors=masks.get("colors"))
    return InputPipeline(samples, loader, mask_loader=mask_loader, batch_size=batch_size,
                         output_structure=FEATURES, **kwargs)  # fmt: skip


def train(
    ctx: StageContext, split_samples: pd.DataFrame, mask_classes: list[str], *,
    sampler: dict[str, Any], loader: dict[str, Any], augmenter: dict[str, Any],
    masks: dict[str, Any], model: dict[str, Any], trainer: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Fit a per-pixel classifier on the train split, validating on devel."""
    image_loader: ImageLoader = instantiate(loader)
    train_samples, devel_samples = common.training_samples(ctx, split_samples, image_loader)
    fit = instantiate(trainer)
    if fit.class_weight is not None:
        raise ConfigError("trainer.class_weight weighs whole images; it does not apply to "
                          "segmentation: drop it.")  # fmt: skip
    train_data = _pipeline(train_samples, image_loader, mask_classes, masks, fit.batch_size,
                           **common.augmentation(ctx, sampler, augmenter))  # fmt: skip
    net = common.build_model(ctx, fit, model, "segmentation", len(train_data),
                             input_shape=image_loader.output_shape,
                             num_classes=len(mask_classes))  # fmt: skip
    devel_data = (
        _pipeline(devel_samples, image_loader, mask_classes, masks, fit.batch_size)
        if len(devel_samples)
        else None
    )
    common.fit_checkpointed(ctx, fit, net, train_data, devel_data, "segmentation",
                            split_samples, image_loader)  # fmt: skip
    return {"model": net, "classes": mask_classes, "history": ctx.history}


def evaluate(
    ctx: StageContext, split_samples: pd.DataFrame, model: Any, classes: list[str], *,
    loader: dict[str, Any], masks: dict[str, Any], batch_size: int, purposes: list[str],
    overlay_count: int = 16,
) -> dict[str, Any]:  # fmt: skip
    """Per purpose: pixel accuracy, IoU and Dice per class and their means. Per image rows in
    ``artifacts/predictions.csv`` (and the ``predictions`` output);
    ``artifacts/segmentation_overlays.png`` shows the first devel images with their true and
    predicted masks, and ``artifacts/overlays/<purpose>-<rank>.png`` each purpose's images of
    lowest IoU with theirs (named in the table's ``overlay`` column)."""
    image_loader: ImageLoader = instantiate(loader)
    evaluation: dict[str, Any] = {"classes": classes, "task": "segmentation"}
    rows = []
    for purpose, subset in common.evaluated_samples(ctx, split_samples, purposes, image_loader):
        data = _pipeline(subset, image_loader, classes, masks, batch_size)
        # images shown: spread over the (path-sorted, so category-grouped) subset
        shown_rows = np.unique(np.linspace(0, len(subset) - 1, overlay_count).astype(int))
        shown, truth, predicted = _predict_masks(model, data, shown_rows)
        scalars = segmentation_metrics(truth, predicted, classes)
        common.add_purpose_metrics(ctx, purpose, scalars)
        evaluation[purpose] = {"scalars": scalars, "count": len(subset)}
        found = []
        for path, t, p in zip(subset["path"], truth, predicted, strict=True):
            one = segmentation_metrics(t, p, classes)
            found.append({"path": path, "purpose": purpose, "overlay": "",
                          **{name: one[name] for name in ROW_METRICS}})  # fmt: skip
        worst = np.argsort([row["mean_iou"] for row in found], kind="stable")[:WORST_SHOWN]
        pipeline = _pipeline(subset.iloc[worst], image_loader, classes, masks, batch_size)
        for rank, (row, png) in enumerate(zip(worst, _pairs(model, pipeline), strict=True)):
            found[row]["overlay"] = f"overlays/{purpose}-{rank:02d}.png"
            storage.write_bytes(ctx.artifact(found[row]["overlay"]), png)
        rows += found
        if purpose == "devel" or "overlays" not in evaluation:
            url = _write_overlays(ctx, shown, truth[shown_rows], predicted[shown_rows], shown_rows)
            evaluation["overlays"] = {"url": url, "purpose": purpose}
    return common.evaluation_outputs(ctx, evaluation, rows,
                                     ["path", "purpose", *ROW_METRICS, "overlay"])  # fmt: skip


def _pairs(model: Any, data: InputPipeline) -> list[bytes]:
    """Each image of ``data`` beside itself with its true mask and with its predicted one."""
    images, truth, predicted = _predict_masks(model, data, np.arange(len(data.samples)))
    pixels = _display(images)
    return [thumbnails(np.stack([overlay(pixels[i : i + 1], truth[i : i + 1])[0],
                                 overlay(pixels[i : i + 1], predicted[i : i + 1])[0]]),
                       ["true", "predicted"]) for i in range(len(pixels))]  # fmt: skip


def _predict_masks(
    model: Any, data: InputPipeline, shown_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images at ``shown_rows``, and the true and predicted label maps of every image."""
    images, truths, predictions = [], [], []
    for batch_images, batch_masks in data.numpy_iterator():
        scores = np.asarray(model.predict_on_batch(batch_images))
        first = sum(len(t) for t in truths)
        keep = shown_rows[(shown_rows >= first) & (shown_rows < first + len(batch_images))]
        images.append(batch_images[keep - first])
        truths.append(batch_masks[..., 0])
        predictions.append(scores.argmax(axis=-1))
    return np.concatenate(images), np.concatenate(truths), np.concatenate(predictions)


def _write_overlays(
    ctx: StageContext, images: np.ndarray, truth: np.ndarray, predicted: np.ndarray,
    rows: np.ndarray,
) -> str:  # fmt: skip
    """``artifacts/segmentation_overlays.png``: each image with its true and predicted masks."""
    pixels = _display(images)
    pairs = np.stack([overlay(pixels, truth), overlay(pixels, predicted)], axis=1)
    captions = [f"{kind} {i}" for i in rows for kind in ("true", "predicted")]
    png = thumbnails(pairs.reshape(-1, *pairs.shape[2:]), captions)
    url = ctx.artifact("segmentation_overlays.png")
    storage.write_bytes(url, png)
    return url


def _display(images: np.ndarray) -> np.ndarray:
    """Model inputs stretched to 0..255 pixels for pictures (whatever the loader's rescale)."""
    low, high = images.min(), images.max()
    if high - low < 1e-6:
        return np.zeros_like(images, dtype=np.uint8)
    return ((images - low) / (high - low) * 255).astype(np.uint8)


def report(
    ctx: StageContext, split_samples: pd.DataFrame, evaluation: dict[str, Any],
    history: list[dict[str, Any]], *, pivot: dict[str, list[str]],
) -> dict[str, Any]:  # fmt: skip
    """Charts (dataset, training curves, IoU and Dice per class), the pivot summary, the
    overlays and the self-contained ``artifacts/report.html``."""

    specs = common.report_charts(split_samples, history)
    for purpose in common.REPORTED_PURPOSES:
        if purpose in evaluation:
            specs[f"iou_dice_{purpose}"] = charts.per_class_scores(
                evaluation[purpose]["scalars"], ["iou", "dice"], purpose
            )
    images = {}
    if "overlays" in evaluation and storage.exists(evaluation["overlays"]["url"]):
        title = f"True and predicted masks ({evaluation['overlays']['purpose']})"
        images[title] = storage.read_bytes(evaluation["overlays"]["url"])
    summary = {"mask classes": ", ".join(evaluation["classes"])}
    metrics = common.report_metrics(evaluation, history)
    return common.publish_report(ctx, split_samples, specs, images, pivot, metrics, summary)
