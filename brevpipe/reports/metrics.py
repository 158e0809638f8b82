"""Evaluation metrics: single-label and multi-label classification, segmentation, and the
threshold curves of an inspection station. Pure NumPy; checked against scikit-learn in tests."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(
    truth: np.ndarray, predicted: np.ndarray, scores: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, cross-entropy, per-class and macro precision/recall/F1, confusion matrix."""
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    true_positive = np.diag(confusion).astype(float)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(scores[np.arange(len(truth)), truth], eps, 1.0))))
    scalars = {"accuracy": float((truth == predicted).mean()), "loss": loss}
    _add_precision_recall_f1(
        scalars, classes, true_positive, confusion.sum(axis=0), confusion.sum(axis=1)
    )
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
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    loss = -np.mean(truth * np.log(clipped) + (~truth) * np.log(1 - clipped))
    scalars = {
        "accuracy": float((truth == predicted).all(axis=1).mean()),
        "hamming_loss": float((truth != predicted).mean()),
        "loss": float(loss),
    }
    _add_precision_recall_f1(scalars, classes, tp, tp + fp, tp + fn)
    counts = {name: {"tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i]), "tn": int(tn[i])}
              for i, name in enumerate(classes)}  # fmt: skip
    return {
        "scalars": scalars,
        "label_counts": counts,
        "count": int(len(truth)),
        "threshold_curves": threshold_curves(truth, scores, classes),
    }


def _add_precision_recall_f1(
    scalars: dict[str, float], classes: list[str], true_positive: np.ndarray,
    predicted_positive: np.ndarray, actual_positive: np.ndarray,
) -> None:  # fmt: skip
    """Add macro, then per-class, precision, recall and F1 (0 where undefined, as
    scikit-learn's ``zero_division=0``) to ``scalars``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(true_positive / predicted_positive)
        recall = np.nan_to_num(true_positive / actual_positive)
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    scalars["macro_precision"] = float(precision.mean())
    scalars["macro_recall"] = float(recall.mean())
    scalars["macro_f1"] = float(f1.mean())
    for i, name in enumerate(classes):
        scalars[f"precision/{name}"] = float(precision[i])
        scalars[f"recall/{name}"] = float(recall[i])
        scalars[f"f1/{name}"] = float(f1[i])


def threshold_curves(
    positive: np.ndarray, scores: np.ndarray, classes: list[str], steps: int = 101
) -> dict[str, dict[str, list[float]]]:
    """Per class, across thresholds on its score: the true reject rate (share of the class's
    samples scored at or above the threshold) and the false reject rate (share of the other
    samples scored at or above it): the security curve of an inspection station.
    ``positive``: ``[samples, classes]`` booleans, whether each sample belongs to each class."""
    thresholds = np.linspace(0.0, 1.0, steps)
    positive = np.asarray(positive, bool)

    def at_or_above(s: np.ndarray) -> np.ndarray:
        return (s[None, :] >= thresholds[:, None]).mean(axis=1) if len(s) else np.zeros(steps)

    curves = {}
    for i, name in enumerate(classes):
        curves[name] = {
            "threshold": thresholds.round(4).tolist(),
            "true_reject_rate": at_or_above(scores[positive[:, i], i]).tolist(),
            "false_reject_rate": at_or_above(scores[~positive[:, i], i]).tolist(),
        }
    return curves


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
