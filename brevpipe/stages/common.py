"""What the stages of every pipeline share: finding and recording samples, the readable samples
of a purpose, the seeded and checkpointed fit, the evaluation's per-sample table, and the
report's charts and page. A task's stage module (classification, segmentation) says only what
differs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pandas as pd

from brevpipe.config.components import instantiate
from brevpipe.data.loader import ImageLoader
from brevpipe.data.samples import fingerprint, samples_to_csv, summarize
from brevpipe.engine.checkpoint import Checkpoint
from brevpipe.engine.context import StageContext
from brevpipe.engine.rerun import check_fingerprint
from brevpipe.engine.seeding import keras_seeded
from brevpipe.errors import DataError
from brevpipe.io import storage
from brevpipe.jobs import layout
from brevpipe.reports import charts

log = logging.getLogger("brevpipe")
REPORTED_PURPOSES = ("devel", "test")  # the purposes the report charts


# -- samples ---------------------------------------------------------------------------------
def dataset_component(ctx: StageContext, dataset: dict[str, Any]) -> Any:
    """The dataset component. A dataset that generates its data (the built-in shapes) and
    whose config says ``seed: null`` gets the job's ``dataset`` seed (``ctx.seed_for``); a
    seed set in the config is used as given (output.json files from before 2026-11-26 say
    ``seed: 0``). The recorded config keeps what the user set."""
    derived = "seed" in dataset and dataset["seed"] is None
    return instantiate(dataset, **({"seed": ctx.seed_for("dataset")} if derived else {}))


def record_samples(ctx: StageContext, samples: pd.DataFrame, rerun: dict[str, Any] | None) -> None:
    """In a rerun, check the images are the original job's; write ``artifacts/samples.csv``."""
    check_fingerprint(fingerprint(samples), rerun)
    storage.write_bytes(ctx.artifact("samples.csv"), samples_to_csv(samples))


def purpose_samples(
    ctx: StageContext, split_samples: pd.DataFrame, purpose: str, loader: ImageLoader
) -> pd.DataFrame:
    """The samples of one purpose, less unreadable images when ``loader.on_error=skip``
    (counted in output.json's ``samples`` section)."""
    samples = split_samples[split_samples["purpose"] == purpose]
    if loader.on_error != "skip":
        return samples
    bad = loader.find_unreadable(samples["path"].tolist(), _etags(samples))
    if bad:
        for url, reason in bad:
            log.warning("skipping unreadable image %s (%s)", url, reason)
        ctx.add_skipped([url for url, _ in bad])
    return samples[~samples["path"].isin({u for u, _ in bad})]


def training_samples(
    ctx: StageContext, split_samples: pd.DataFrame, loader: ImageLoader
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The readable train and devel samples; no training sample is an error."""
    train = purpose_samples(ctx, split_samples, "train", loader)
    devel = purpose_samples(ctx, split_samples, "devel", loader)
    if train.empty:
        raise DataError("no training samples: check split.fractions and the dataset.")
    return train, devel


def evaluated_samples(
    ctx: StageContext, split_samples: pd.DataFrame, purposes: list[str], loader: ImageLoader
) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(purpose, readable samples)`` for each purpose that has any."""
    for purpose in purposes:
        subset = purpose_samples(ctx, split_samples, purpose, loader)
        if not subset.empty:
            yield purpose, subset


def _etags(samples: pd.DataFrame) -> list[str | None] | None:
    return samples["etag"].tolist() if "etag" in samples else None


def raise_naming_bad_images(exc: Exception, samples: pd.DataFrame, loader: ImageLoader) -> None:
    """Turn a decode failure deep in tf.data into an error that names the files."""
    bad = loader.find_unreadable(samples["path"].tolist(), _etags(samples))
    if bad:
        raise loader.unreadable_error(bad) from exc


# -- training --------------------------------------------------------------------------------
def augmentation(
    ctx: StageContext, sampler: dict[str, Any], augmenter: dict[str, Any]
) -> dict[str, Any]:
    """The training pipeline's ``augmenter``, ``sampler`` and ``seed`` (InputPipeline
    arguments), seeded per component: a stage that rebuilds the pipeline (the preview) draws
    what training drew."""
    return {
        "augmenter": instantiate(augmenter),
        "sampler": instantiate(sampler, seed=ctx.seed_for("sampler")),
        "seed": ctx.seed_for("augmenter"),
    }


def build_model(
    ctx: StageContext, fit: Any, model: dict[str, Any], task: str, steps: int, **runtime: Any
) -> Any:
    """The model, built from the stage's seed in the trainer's scope (distribution strategy and
    precision policy) with ``runtime`` arguments (input shape, class count...), compiled."""
    with keras_seeded(ctx.seed), fit.scope():
        net = instantiate(model)(**runtime)
        fit.compile(net, steps, task)
    return net


def fit_checkpointed(
    ctx: StageContext, fit: Any, net: Any, train_data: Any, devel_data: Any, task: str,
    split_samples: pd.DataFrame, loader: ImageLoader,
) -> None:  # fmt: skip
    """``fit.fit`` with epochs going to the job live and a checkpoint in the stage's folder
    (a crashed job resumes from its last epoch; removed once the outputs are saved). A decode
    failure names the unreadable files."""
    import tensorflow as tf

    checkpoint = Checkpoint(ctx.bucket.stage(ctx.name, "checkpoint"), ctx.key)
    ctx.cleanups.append(checkpoint.remove)
    try:
        fit.fit(net, train_data, devel_data, on_epoch=ctx.add_epoch, verbose=ctx.verbose,
                checkpoint=checkpoint, task=task,
                stop=ctx.stop_callback(fit.stop_check_s))  # fmt: skip
        if checkpoint.restored_epoch:
            ctx.notes["resumed_after_epoch"] = checkpoint.restored_epoch
    except tf.errors.InvalidArgumentError as exc:
        raise_naming_bad_images(exc, split_samples, loader)
        raise


# -- evaluation ------------------------------------------------------------------------------
def add_purpose_metrics(ctx: StageContext, purpose: str, scalars: dict[str, float]) -> None:
    """The scalars of one purpose as job metrics, ``<purpose>/<name>``."""
    ctx.add_metrics({f"{purpose}/{name}": value for name, value in scalars.items()})


def evaluation_outputs(
    ctx: StageContext, evaluation: dict[str, Any], rows: list[dict[str, Any]], columns: list[str]
) -> dict[str, Any]:
    """Write the per-sample ``rows`` to ``artifacts/predictions.csv``; the evaluate stage's
    outputs: ``evaluation``, and the table as ``predictions``."""
    predictions = pd.DataFrame(rows, columns=columns)  # columns: a header even with no rows
    storage.write_bytes(
        ctx.artifact(layout.PREDICTIONS), predictions.to_csv(index=False).encode()
    )
    return {"evaluation": evaluation, "predictions": predictions}


# -- report ----------------------------------------------------------------------------------
def report_charts(split_samples: pd.DataFrame, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The charts every report opens with: the dataset summary and the training curves (of
    the training stage's ``history`` output)."""

    by_purpose = summarize(split_samples)["by_purpose_category"]
    specs = {"dataset_summary": charts.dataset_summary(by_purpose)}
    if history:
        specs["training_curves"] = charts.training_curves(history)
    return specs


def report_metrics(evaluation: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics a report shows, from its declared inputs: the last epoch's and the
    evaluation's per purpose (``<purpose>/<name>``), as the job recorded them."""
    last = {k: v for k, v in (history[-1] if history else {}).items() if k != "epoch"}
    return {**last, **{f"{purpose}/{name}": value
                       for purpose, part in evaluation.items() if isinstance(part, dict)
                       for name, value in part.get("scalars", {}).items()}}  # fmt: skip


def publish_report(
    ctx: StageContext, split_samples: pd.DataFrame, specs: dict[str, Any],
    images: dict[str, bytes], pivot: dict[str, list[str]], metrics: dict[str, float],
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write the charts (``artifacts/charts/*.vl.json``), the pivot summary and the
    self-contained ``artifacts/report.html`` (``summary``: more rows for its summary table);
    return the report stage's outputs."""
    from brevpipe.reports.report import pivot as pivot_table
    from brevpipe.reports.report import render_html

    for name, spec in specs.items():
        storage.write_json(ctx.artifact("charts", f"{name}.vl.json"), spec)
    pivot_data = pivot_table(split_samples, pivot["rows"], pivot["cols"])
    storage.write_json(ctx.artifact("samples_pivot.json"), pivot_data)
    page = render_html(
        title=f"brevpipe job {ctx.job_id}",
        summary={**ctx.summary(), "samples": len(split_samples), **(summary or {})},
        metrics=metrics, charts=specs, pivot_data=pivot_data, images=images,
    )
    url = ctx.artifact("report.html")
    storage.write_bytes(url, page.encode())
    return {"report": {"url": url, "charts": sorted(specs), "atlases": sorted(images)}}
