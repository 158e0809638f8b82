"""Stages of the image classification pipeline (declared in pipelines/classification.yaml).

Each stage is a function ``(ctx, **inputs, **params) -> {output_name: value}``; component
configs arrive as plain ``_target_`` mappings and are built with Hydra's ``instantiate``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brevpipe import __version__
from brevpipe.data.encoder import OneHotEncoder
from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.samples import fingerprint, samples_from_csv, samples_to_csv, summarize
from brevpipe.data.split import SampleSplit, identification_table
from brevpipe.data.visual import preview_png
from brevpipe.engine import storage
from brevpipe.engine.checkpoint import Checkpoint
from brevpipe.engine.components import instantiate
from brevpipe.engine.rerun import check_fingerprint
from brevpipe.engine.runner import StageContext
from brevpipe.engine.seeding import derive_seed
from brevpipe.errors import ConfigError, DataError

log = logging.getLogger("brevpipe")


def find_samples(
    ctx: StageContext, *, dataset: dict[str, Any], rerun: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Find the dataset's images; write ``artifacts/samples.csv``. In a rerun, check that they
    are the original job's."""
    samples = instantiate(dataset).find_samples()
    record_samples(ctx, samples, rerun)
    log.info("found %d images in %d classes", len(samples), samples["category"].nunique())
    return {"samples": samples}


def record_samples(ctx: StageContext, samples: pd.DataFrame, rerun: dict[str, Any] | None) -> None:
    """In a rerun, check the images are the original job's; write ``artifacts/samples.csv``."""
    check_fingerprint(fingerprint(samples), rerun)
    storage.write_bytes(ctx.job.artifact_path("samples.csv"), samples_to_csv(samples))


def split_samples(
    ctx: StageContext, samples: pd.DataFrame, *, split: dict[str, Any]
) -> dict[str, Any]:
    """Assign purposes; keep assignments from an earlier split of this job or ``reuse_url``."""
    splitter: SampleSplit = instantiate({"_target_": "split:default", **split}, seed=ctx.seed)
    identification_url = ctx.job.artifact_path("sample_identification.csv")
    previous_url = splitter.reuse_url or (
        identification_url if storage.exists(identification_url) else None
    )
    previous = samples_from_csv(storage.read_bytes(previous_url)) if previous_url else None
    assigned = splitter.assign(samples, previous)
    persisted = identification_table(assigned, splitter.uniqueness, previous)
    storage.write_bytes(identification_url, persisted.to_csv(index=False).encode())
    ctx.set_section("samples", summarize(assigned))
    return {"split_samples": assigned}


def _usable(samples: pd.DataFrame, loader: ImageLoader, ctx: StageContext) -> pd.DataFrame:
    """Drop unreadable images when ``loader.on_error=skip``, counting them in output.json."""
    if loader.on_error != "skip":
        return samples
    bad = loader.find_unreadable(samples["path"].tolist(), _etags(samples))
    if bad:
        for url, reason in bad:
            log.warning("skipping unreadable image %s (%s)", url, reason)
        section = dict(ctx.job.samples)
        skipped = sorted({*section.get("skipped_urls", []), *(url for url, _ in bad)})
        ctx.set_section("samples", {**section, "skipped": len(skipped), "skipped_urls": skipped})
    return samples[~samples["path"].isin({u for u, _ in bad})]


def _etags(samples: pd.DataFrame) -> list[str | None] | None:
    return samples["etag"].tolist() if "etag" in samples else None


def _raise_naming_bad_images(exc: Exception, samples: pd.DataFrame, loader: ImageLoader) -> None:
    """Turn a decode failure deep in tf.data into an error that names the files."""
    bad = loader.find_unreadable(samples["path"].tolist(), _etags(samples))
    if bad:
        raise loader.unreadable_error(bad) from exc


def _seed(ctx: StageContext, component: str) -> int:
    """A component's seed, from (root seed, "train", component): the training pipeline's
    components are seeded the same in every stage that rebuilds them (e.g. the preview)."""
    return derive_seed(ctx.job.seed, "train", component)


def _training_pipeline(
    ctx: StageContext, samples: pd.DataFrame, loader: ImageLoader, encoder: Any,
    sampler: dict[str, Any], augmenter: dict[str, Any], batch_size: int,
    cache: str | None = None,
) -> InputPipeline:  # fmt: skip
    return InputPipeline(
        samples, loader, encoder=encoder, augmenter=instantiate(augmenter),
        sampler=instantiate(sampler, seed=_seed(ctx, "sampler")), batch_size=batch_size,
        seed=_seed(ctx, "augmenter"), cache=cache,
    )  # fmt: skip


def train(
    ctx: StageContext,
    split_samples: pd.DataFrame,
    *,
    sampler: dict[str, Any],
    loader: dict[str, Any],
    augmenter: dict[str, Any],
    encoder: dict[str, Any],
    model: dict[str, Any],
    trainer: dict[str, Any],
    cache: str | None = None,
) -> dict[str, Any]:
    """Fit the model on the train split, validating on devel; epochs go to the job live."""
    import keras
    import tensorflow as tf

    image_loader: ImageLoader = instantiate(loader)
    train_samples = _usable(split_samples[split_samples["purpose"] == "train"], image_loader, ctx)
    devel_samples = _usable(split_samples[split_samples["purpose"] == "devel"], image_loader, ctx)
    if train_samples.empty:
        raise DataError("no training samples: check split.fractions and the dataset.")
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
    train_data = _training_pipeline(
        ctx, train_samples, image_loader, label_encoder, sampler, augmenter, fit.batch_size, cache
    )
    keras.utils.set_random_seed(ctx.seed)
    with fit.scope():  # distribution strategy and precision policy
        # multi-label builders take multi_label=True (sigmoid scores); others need not know
        extra = {"multi_label": True} if task == "multi_label" else {}
        net = instantiate(model)(
            input_shape=image_loader.output_shape, num_classes=len(label_encoder.classes),
            **extra,
        )  # fmt: skip
        fit.compile(net, len(train_data), task)
    devel_data = (
        InputPipeline(
            devel_samples, image_loader, encoder=label_encoder, batch_size=fit.batch_size
        )  # fmt: skip
        if len(devel_samples)
        else None
    )
    checkpoint = Checkpoint(storage.join(ctx.url, "checkpoint"), ctx.key)
    ctx.cleanups.append(checkpoint.remove)
    try:
        fit.fit(net, train_data, devel_data, on_epoch=ctx.add_epoch, verbose=ctx.verbose,
                checkpoint=checkpoint, task=task, stop_url=ctx.job.bucket_url)  # fmt: skip
        if checkpoint.restored_epoch:
            ctx.notes["resumed_after_epoch"] = checkpoint.restored_epoch
    except tf.errors.InvalidArgumentError as exc:
        _raise_naming_bad_images(exc, split_samples, image_loader)
        raise
    return {"model": net, "classes": list(label_encoder.classes)}


def preview(
    ctx: StageContext,
    split_samples: pd.DataFrame,
    classes: list[str],
    *,
    sampler: dict[str, Any],
    loader: dict[str, Any],
    augmenter: dict[str, Any],
    batch_size: int,
) -> dict[str, Any]:
    """``artifacts/samples_preview.png``: the first augmented training batch, labelled."""
    image_loader: ImageLoader = instantiate({**loader, "rescale": "none"})
    train_samples = _usable(split_samples[split_samples["purpose"] == "train"], image_loader, ctx)
    pipeline = _training_pipeline(
        ctx, train_samples, image_loader, None, sampler, augmenter, batch_size
    )
    pipeline.output_structure = ("image", "index")
    images, rows = next(pipeline.numpy_iterator(epoch=0))
    captions = ["+".join(pipeline.samples["category"].iloc[int(r)]) for r in rows]
    url = ctx.job.artifact_path("samples_preview.png")
    storage.write_bytes(url, preview_png(images, captions))
    return {"preview": {"url": url, "count": len(images)}}


def evaluate(
    ctx: StageContext,
    split_samples: pd.DataFrame,
    model: Any,
    classes: list[str],
    *,
    loader: dict[str, Any],
    batch_size: int,
    purposes: list[str],
    encoder: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per purpose: accuracy, loss, per-class precision/recall/F1, the confusion matrix and
    threshold curves; for multi-label models (``encoder=multihot``) per-label metrics."""
    import tensorflow as tf

    image_loader: ImageLoader = instantiate(loader)
    label_encoder = (
        instantiate({**encoder, "classes": classes}) if encoder else OneHotEncoder(classes)
    ).fit([])
    multi_label = label_encoder.multi_label
    evaluation: dict[str, Any] = {"classes": classes, "multi_label": multi_label}
    rows = []
    for purpose in purposes:
        subset = _usable(split_samples[split_samples["purpose"] == purpose], image_loader, ctx)
        if subset.empty:
            continue
        data = InputPipeline(subset, image_loader, batch_size=batch_size, output_structure="image")
        try:
            # endless and cut by steps: Keras 3 warns when a finite dataset ends
            scores = model.predict(data.get_dataset(epochs=None), steps=len(data), verbose=0)
        except tf.errors.InvalidArgumentError as exc:
            _raise_naming_bad_images(exc, subset, image_loader)
            raise
        if multi_label:
            truth_rows = label_encoder.transform(subset["category"]).astype(np.int32)
            metrics = multilabel_metrics(truth_rows, label_encoder.decide(scores), scores, classes)
        else:
            truth = label_encoder.indices(subset["category"])
            metrics = classification_metrics(truth, scores.argmax(axis=1), scores, classes)
        for name, value in metrics["scalars"].items():
            ctx.add_metric(f"{purpose}/{name}", value)
        evaluation[purpose] = metrics
        predicted = label_encoder.decode(scores)
        for path, t, p, s in zip(subset["path"], subset["category"], predicted, scores,
                                 strict=True):  # fmt: skip
            rows.append(
                {"path": path, "purpose": purpose, "true": "+".join(t), "predicted": "+".join(p),
                 **{f"score_{c}": float(v) for c, v in zip(classes, s, strict=True)}}
            )  # fmt: skip
    storage.write_bytes(
        ctx.job.artifact_path("predictions.csv"), pd.DataFrame(rows).to_csv(index=False).encode()
    )
    return {"evaluation": evaluation}


def classification_metrics(
    truth: np.ndarray, predicted: np.ndarray, scores: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, cross-entropy, per-class and macro precision/recall/F1, confusion matrix."""
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    true_positive = np.diag(confusion).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(true_positive / confusion.sum(axis=0))
        recall = np.nan_to_num(true_positive / confusion.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(scores[np.arange(len(truth)), truth], eps, 1.0))))
    scalars = {
        "accuracy": float((truth == predicted).mean()),
        "loss": loss,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
    }
    for i, name in enumerate(classes):
        scalars[f"precision/{name}"] = float(precision[i])
        scalars[f"recall/{name}"] = float(recall[i])
        scalars[f"f1/{name}"] = float(f1[i])
    return {
        "scalars": scalars,
        "confusion_matrix": confusion.tolist(),
        "count": int(len(truth)),
        "threshold_curves": threshold_curves(np.eye(n, dtype=bool)[truth], scores, classes),
    }


def multilabel_metrics(
    truth: np.ndarray, predicted: np.ndarray, scores: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Multi-label: ``accuracy`` is the exact-match ratio (all labels right), ``hamming_loss``
    the share of wrong label decisions; per-label and macro precision/recall/F1, binary
    cross-entropy, per-label counts (tp, fp, fn, tn) and threshold curves."""
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp = (truth & predicted).sum(axis=0).astype(float)
    fp = (~truth & predicted).sum(axis=0).astype(float)
    fn = (truth & ~predicted).sum(axis=0).astype(float)
    tn = (~truth & ~predicted).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / (tp + fp))
        recall = np.nan_to_num(tp / (tp + fn))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    loss = -np.mean(truth * np.log(clipped) + (~truth) * np.log(1 - clipped))
    scalars = {
        "accuracy": float((truth == predicted).all(axis=1).mean()),
        "hamming_loss": float((truth != predicted).mean()),
        "loss": float(loss),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
    }
    for i, name in enumerate(classes):
        scalars[f"precision/{name}"] = float(precision[i])
        scalars[f"recall/{name}"] = float(recall[i])
        scalars[f"f1/{name}"] = float(f1[i])
    counts = {name: {"tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i]), "tn": int(tn[i])}
              for i, name in enumerate(classes)}  # fmt: skip
    return {
        "scalars": scalars,
        "label_counts": counts,
        "count": int(len(truth)),
        "threshold_curves": threshold_curves(truth, scores, classes),
    }


def threshold_curves(
    positive: np.ndarray, scores: np.ndarray, classes: list[str], steps: int = 101
) -> dict[str, dict[str, list[float]]]:
    """Per class, across thresholds on its score: the true reject rate (share of the class's
    samples scored at or above the threshold) and the false reject rate (share of the other
    samples scored at or above it): the security curve of an inspection station.
    ``positive``: ``[samples, classes]`` booleans, whether each sample belongs to each class."""
    thresholds = np.linspace(0.0, 1.0, steps)
    positive = np.asarray(positive, bool)
    curves = {}
    for i, name in enumerate(classes):
        negative = scores[~positive[:, i], i]
        positive_scores = scores[positive[:, i], i]
        at_or_above = lambda s: (  # noqa: E731
            (s[None, :] >= thresholds[:, None]).mean(axis=1) if len(s) else np.zeros(steps)
        )
        curves[name] = {
            "threshold": thresholds.round(4).tolist(),
            "true_reject_rate": at_or_above(positive_scores).tolist(),
            "false_reject_rate": at_or_above(negative).tolist(),
        }
    return curves


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
    local = Path(ctx.job.temp_path("export", "model.keras")).parent
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
        "job_id": ctx.job.id,
    }
    (local / "model.json").write_text(json.dumps(metadata, indent=2))
    archive = local / "saved_model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # all a predictor needs: load_predictor(url)
        tar.add(local / "saved_model", arcname="saved_model")
        tar.add(local / "model.json", arcname="model.json")
    model_url = ctx.job.artifact_path("model")
    storage.upload(local / "model.keras", storage.join(model_url, "model.keras"))
    storage.upload(archive, storage.join(model_url, "saved_model.tar.gz"))
    info = {
        "format": "keras+saved_model",
        "keras_url": storage.join(model_url, "model.keras"),
        "archive_url": storage.join(model_url, "saved_model.tar.gz"),
        "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        **metadata,
    }
    storage.write_bytes(storage.join(model_url, "model.json"), json.dumps(info, indent=2).encode())
    ctx.set_section("model", info)
    return {"model_info": info}


def report(
    ctx: StageContext,
    split_samples: pd.DataFrame,
    evaluation: dict[str, Any],
    preview: dict[str, Any],
    *,
    loader: dict[str, Any],
    pivot: dict[str, list[str]],
    atlas_size: int = 64,
) -> dict[str, Any]:
    """Charts (``artifacts/charts/*.vl.json``), the pivot summary, thumbnail atlases of
    misclassified and sampled images, and the self-contained ``artifacts/report.html``."""
    from brevpipe.reports import charts as vl
    from brevpipe.reports.report import pivot as pivot_table
    from brevpipe.reports.report import render_html

    classes = evaluation["classes"]
    specs = {"dataset_summary": vl.dataset_summary(summarize(split_samples)["by_purpose_category"])}
    if ctx.job.history:
        specs["training_curves"] = vl.training_curves(ctx.job.history)
    for purpose in ("devel", "test"):
        if purpose in evaluation:
            if "confusion_matrix" in evaluation[purpose]:  # single-label only
                specs[f"confusion_{purpose}"] = vl.confusion_matrix(
                    evaluation[purpose]["confusion_matrix"], classes, purpose
                )
            specs[f"thresholds_{purpose}"] = vl.threshold_curves(
                evaluation[purpose]["threshold_curves"], purpose
            )
    for name, spec in specs.items():
        storage.write_json(ctx.job.artifact_path("charts", f"{name}.vl.json"), spec)
    pivot_data = pivot_table(split_samples, pivot["rows"], pivot["cols"])
    storage.write_json(ctx.job.artifact_path("samples_pivot.json"), pivot_data)

    images = {}
    image_loader = ImageLoader(**{**instantiate(loader).metadata(), "rescale": "none"})
    predictions_csv = storage.read_bytes(ctx.job.artifact_path("predictions.csv"))
    predictions = pd.read_csv(io.BytesIO(predictions_csv))
    wrong = predictions[predictions["true"] != predictions["predicted"]].head(atlas_size)
    if len(wrong):
        captions = [
            f"{t}>{p} {row[f'score_{p}']:.2f}" if f"score_{p}" in row else f"{t}>{p or '-'}"
            for t, p, (_, row) in zip(wrong["true"], wrong["predicted"].fillna(""),
                                      wrong.iterrows(), strict=True)
        ]  # fmt: skip
        images["Misclassified (true > predicted, score)"] = _atlas(
            wrong["path"].tolist(), captions, image_loader, "misclassified.png", ctx
        )
    per_class = max(1, atlas_size // max(1, len(classes)))
    readable = split_samples[~split_samples["path"].isin(ctx.job.samples.get("skipped_urls", []))]
    sampled = readable.groupby(readable["category"].map("+".join), sort=True).head(per_class)
    images["Sampled images per category"] = _atlas(
        sampled["path"].tolist(), ["+".join(c) for c in sampled["category"]], image_loader,
        "samples_atlas.png", ctx,
    )  # fmt: skip
    if storage.exists(preview["url"]):
        images["First augmented training batch"] = storage.read_bytes(preview["url"])

    job = ctx.job
    page = render_html(
        title=f"brevpipe job {job.id}",
        summary={"pipeline": job.pipeline, "job": job.id, "bucket": job.bucket_url,
                 "started": job.start_time, "seed": job.seed,
                 "samples": len(split_samples)},  # fmt: skip
        metrics=job.metrics, charts=specs, pivot_data=pivot_data, images=images,
    )  # fmt: skip
    url = job.artifact_path("report.html")
    storage.write_bytes(url, page.encode())
    return {"report": {"url": url, "charts": sorted(specs), "atlases": sorted(images)}}


def _atlas(paths: list[str], captions: list[str], loader: ImageLoader, name: str,
           ctx: StageContext) -> bytes:  # fmt: skip
    """Load ``paths`` as thumbnails, write ``artifacts/<name>``, return the PNG."""
    from brevpipe.reports.report import thumbnails

    samples = pd.DataFrame({"path": paths, "category": [()] * len(paths)})
    pipeline = InputPipeline(samples, loader, batch_size=64, output_structure="image")
    png = thumbnails(np.concatenate(list(pipeline.numpy_iterator())), captions)
    storage.write_bytes(ctx.job.artifact_path(name), png)
    return png


def segmentation_metrics(truth: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Per class and mean intersection over union and Dice from integer label maps."""
    scalars: dict[str, float] = {}
    ious, dices = [], []
    for i, name in enumerate(classes):
        t, p = truth == i, predicted == i
        union, total = np.logical_or(t, p).sum(), t.sum() + p.sum()
        if total == 0:
            continue  # the class is absent from truth and prediction: no score
        intersection = np.logical_and(t, p).sum()
        scalars[f"iou/{name}"] = float(intersection / union)
        scalars[f"dice/{name}"] = float(2 * intersection / total)
        ious.append(scalars[f"iou/{name}"])
        dices.append(scalars[f"dice/{name}"])
    scalars["mean_iou"] = float(np.mean(ious)) if ious else 0.0
    scalars["mean_dice"] = float(np.mean(dices)) if dices else 0.0
    scalars["pixel_accuracy"] = float((truth == predicted).mean())
    return scalars
