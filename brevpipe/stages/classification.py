"""Stages of the image classification pipeline (declared in conf/pipeline/classification.yaml).

Each stage is a function ``(ctx, **inputs, **params) -> {output_name: value}``; component
configs arrive as plain ``_target_`` mappings and are built with Hydra's ``instantiate``.
What every pipeline shares is in :mod:`brevpipe.stages.common`; the split and the export,
which the segmentation pipeline runs too, are in :mod:`brevpipe.stages.generic`.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pandas as pd

from brevpipe.config.components import instantiate
from brevpipe.data.encoder import OneHotEncoder
from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.visual import preview_png
from brevpipe.engine.context import StageContext
from brevpipe.errors import ConfigError, DataError
from brevpipe.io import storage
from brevpipe.reports import charts
from brevpipe.reports.metrics import classification_metrics, multilabel_metrics
from brevpipe.stages import common

log = logging.getLogger("brevpipe")


def find_samples(
    ctx: StageContext, *, dataset: dict[str, Any], rerun: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Find the dataset's images; write ``artifacts/samples.csv``. In a rerun, check that they
    are the original job's."""
    samples = common.dataset_component(ctx, dataset).find_samples()
    common.record_samples(ctx, samples, rerun)
    log.info("found %d images in %d classes", len(samples), samples["category"].nunique())
    return {"samples": samples}


def train(
    ctx: StageContext, split_samples: pd.DataFrame, *, sampler: dict[str, Any],
    loader: dict[str, Any], augmenter: dict[str, Any], encoder: dict[str, Any],
    model: dict[str, Any], trainer: dict[str, Any], cache: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Fit the model on the train split, validating on devel; epochs go to the job live."""
    image_loader: ImageLoader = instantiate(loader)
    train_samples, devel_samples = common.training_samples(ctx, split_samples, image_loader)
    label_encoder = instantiate(encoder).fit(train_samples["category"])
    task = "multi_label" if label_encoder.multi_label else "single_label"
    missing = sorted(
        set(label_encoder.classes) - {c for cat in train_samples["category"] for c in cat}
    )
    if missing:
        raise DataError(f"classes {missing} have no training samples; add images or drop them.")

    fit = instantiate(trainer)
    if task == "multi_label" and fit.class_weight is not None:
        raise ConfigError("trainer.class_weight weighs single-label classes; drop it for "
                          "multi-label training (encoder=multihot).")  # fmt: skip
    train_data = InputPipeline(
        train_samples, image_loader, encoder=label_encoder, batch_size=fit.batch_size,
        cache=cache, **common.augmentation(ctx, sampler, augmenter),
    )  # fmt: skip
    # multi-label builders take multi_label=True (sigmoid scores); others need not know
    extra = {"multi_label": True} if task == "multi_label" else {}
    net = common.build_model(ctx, fit, model, task, len(train_data),
                             input_shape=image_loader.output_shape,
                             num_classes=len(label_encoder.classes), **extra)  # fmt: skip
    devel_data = (
        InputPipeline(
            devel_samples, image_loader, encoder=label_encoder, batch_size=fit.batch_size
        )  # fmt: skip
        if len(devel_samples)
        else None
    )
    common.fit_checkpointed(ctx, fit, net, train_data, devel_data, task, split_samples,
                            image_loader)  # fmt: skip
    return {"model": net, "classes": list(label_encoder.classes), "history": ctx.history}


def preview(
    ctx: StageContext, split_samples: pd.DataFrame, classes: list[str], *,
    sampler: dict[str, Any], loader: dict[str, Any], augmenter: dict[str, Any], batch_size: int,
) -> dict[str, Any]:  # fmt: skip
    """``artifacts/samples_preview.png``: the first augmented training batch, labelled."""
    image_loader: ImageLoader = instantiate({**loader, "rescale": "none"})
    train_samples = common.purpose_samples(ctx, split_samples, "train", image_loader)
    pipeline = InputPipeline(train_samples, image_loader, encoder=None, batch_size=batch_size,
                             **common.augmentation(ctx, sampler, augmenter))  # fmt: skip
    pipeline.output_structure = ("image", "index")
    images, rows = next(pipeline.numpy_iterator(epoch=0))
    captions = ["+".join(pipeline.samples["category"].iloc[int(r)]) for r in rows]
    url = ctx.artifact("samples_preview.png")
    storage.write_bytes(url, preview_png(images, captions))
    return {"preview": {"url": url, "count": len(images)}}


def evaluate(
    ctx: StageContext, split_samples: pd.DataFrame, model: Any, classes: list[str], *,
    loader: dict[str, Any], batch_size: int, purposes: list[str],
    encoder: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Per purpose: accuracy, loss, per-class precision/recall/F1, the confusion matrix and
    threshold curves; for multi-label models (``encoder=multihot``) per-label metrics. Per
    sample, the true and predicted labels and the scores: ``artifacts/predictions.csv`` and
    the ``predictions`` output."""
    image_loader: ImageLoader = instantiate(loader)
    label_encoder = (
        instantiate({**encoder, "classes": classes}) if encoder else OneHotEncoder(classes)
    ).fit([])
    multi_label = label_encoder.multi_label
    evaluation: dict[str, Any] = {"classes": classes, "multi_label": multi_label}
    rows = []
    for purpose, subset in common.evaluated_samples(ctx, split_samples, purposes, image_loader):
        scores = _predict(model, subset, image_loader, batch_size)
        if multi_label:
            truth_rows = label_encoder.transform(subset["category"]).astype(np.int32)
            metrics = multilabel_metrics(truth_rows, label_encoder.decide(scores), scores, classes)
        else:
            truth = label_encoder.indices(subset["category"])
            metrics = classification_metrics(truth, scores.argmax(axis=1), scores, classes)
        common.add_purpose_metrics(ctx, purpose, metrics["scalars"])
        evaluation[purpose] = metrics
        predicted = label_encoder.decode(scores)
        for path, t, p, s in zip(subset["path"], subset["category"], predicted, scores,
                                 strict=True):  # fmt: skip
            rows.append(
                {"path": path, "purpose": purpose, "true": "+".join(t), "predicted": "+".join(p),
                 **{f"score_{c}": float(v) for c, v in zip(classes, s, strict=True)}}
            )  # fmt: skip
    columns = ["path", "purpose", "true", "predicted", *(f"score_{c}" for c in classes)]
    return common.evaluation_outputs(ctx, evaluation, rows, columns)


def _predict(model: Any, samples: pd.DataFrame, loader: ImageLoader, batch_size: int) -> Any:
    """The model's scores for ``samples``; a decode failure names the unreadable files."""
    import tensorflow as tf

    data = InputPipeline(samples, loader, batch_size=batch_size, output_structure="image")
    try:
        # endless and cut by steps: Keras 3 warns when a finite dataset ends
        return model.predict(data.get_dataset(epochs=None), steps=len(data), verbose=0)
    except tf.errors.InvalidArgumentError as exc:
        common.raise_naming_bad_images(exc, samples, loader)
        raise


def report(
    ctx: StageContext, split_samples: pd.DataFrame, evaluation: dict[str, Any],
    preview: dict[str, Any], predictions: pd.DataFrame, history: list[dict[str, Any]], *,
    loader: dict[str, Any], pivot: dict[str, list[str]], atlas_size: int = 64,
) -> dict[str, Any]:  # fmt: skip
    """Charts (``artifacts/charts/*.vl.json``), the pivot summary, thumbnail atlases of
    misclassified and sampled images, and the self-contained ``artifacts/report.html``."""

    classes = evaluation["classes"]
    specs = common.report_charts(split_samples, history)
    for purpose in common.REPORTED_PURPOSES:
        if purpose in evaluation:
            if "confusion_matrix" in evaluation[purpose]:  # single-label only
                specs[f"confusion_{purpose}"] = charts.confusion_matrix(
                    evaluation[purpose]["confusion_matrix"], classes, purpose
                )
            specs[f"thresholds_{purpose}"] = charts.threshold_curves(
                evaluation[purpose]["threshold_curves"], purpose
            )
    job_loader: ImageLoader = instantiate(loader)
    readable = pd.concat([common.purpose_samples(ctx, split_samples, purpose, job_loader)
                          for purpose in split_samples["purpose"].unique()])  # fmt: skip
    image_loader = ImageLoader(**{**job_loader.metadata(), "rescale": "none"})
    images = _atlases(ctx, readable, _read_back(predictions), classes, image_loader, atlas_size)
    if preview.get("url") and storage.exists(preview["url"]):
        images["First augmented training batch"] = storage.read_bytes(preview["url"])
    metrics = common.report_metrics(evaluation, history)
    return common.publish_report(ctx, split_samples, specs, images, pivot, metrics)


def _read_back(predictions: pd.DataFrame) -> pd.DataFrame:
    """The per-sample predictions typed as pandas reads their CSV (scores as numbers, no label
    as NaN), the same whether the table comes in memory or from the stage cache (as text)."""
    return pd.read_csv(io.BytesIO(predictions.to_csv(index=False).encode()))


def _atlases(
    ctx: StageContext, readable: pd.DataFrame, predictions: pd.DataFrame,
    classes: list[str], loader: ImageLoader, atlas_size: int,
) -> dict[str, bytes]:  # fmt: skip
    """Thumbnail atlases, by title: misclassified images (if any), a few images per category
    (of the ``readable`` samples)."""
    images = {}
    wrong = predictions[predictions["true"] != predictions["predicted"]].head(atlas_size)
    if len(wrong):
        captions = [
            f"{t}>{p} {row[f'score_{p}']:.2f}" if f"score_{p}" in row else f"{t}>{p or '-'}"
            for t, p, (_, row) in zip(wrong["true"], wrong["predicted"].fillna(""),
                                      wrong.iterrows(), strict=True)
        ]  # fmt: skip
        images["Misclassified (true > predicted, score)"] = _atlas(
            wrong["path"].tolist(), captions, loader, "misclassified.png", ctx, readable
        )
    per_class = max(1, atlas_size // max(1, len(classes)))
    sampled = readable.groupby(readable["category"].map("+".join), sort=True).head(per_class)
    images["Sampled images per category"] = _atlas(
        sampled["path"].tolist(), ["+".join(c) for c in sampled["category"]], loader,
        "samples_atlas.png", ctx, readable,
    )  # fmt: skip
    return images


def _atlas(paths: list[str], captions: list[str], loader: ImageLoader, name: str,
           ctx: StageContext, split_samples: pd.DataFrame) -> bytes:  # fmt: skip
    """Load ``paths`` as thumbnails, write ``artifacts/<name>``, return the PNG. The content
    hashes of ``split_samples`` come along: the data cache has the images decoded."""
    from brevpipe.reports.report import thumbnails

    samples = pd.DataFrame({"path": paths, "category": [()] * len(paths)})
    if "etag" in split_samples:
        samples["etag"] = samples["path"].map(dict(zip(split_samples["path"],
                                                        split_samples["etag"], strict=True)))
    pipeline = InputPipeline(samples, loader, batch_size=64, output_structure="image")
    png = thumbnails(np.concatenate(list(pipeline.numpy_iterator())), captions)
    storage.write_bytes(ctx.artifact(name), png)
    return png
