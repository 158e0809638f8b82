"""Evaluation numbers checked against scikit-learn on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics

from brevpipe.reports.metrics import classification_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = ["circle", "square", "triangle", "star"]
    truth = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 2.0 * np.eye(4)[truth] * rng.uniform(0, 1, (200, 1))
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = scores.argmax(axis=1)
    if seed == 2:  # a class never predicted: precision 0, as scikit-learn's zero_division=0
        predicted[predicted == 3] = 0
    out = classification_metrics(truth, predicted, scores, classes)
    s = out["scalars"]

    assert s["accuracy"] == pytest.approx(metrics.accuracy_score(truth, predicted))
    assert s["loss"] == pytest.approx(metrics.log_loss(truth, scores, labels=range(4)), rel=1e-6)
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        truth, predicted, labels=range(4), zero_division=0
    )
    for i, name in enumerate(classes):
        assert s[f"precision/{name}"] == pytest.approx(precision[i])
        assert s[f"recall/{name}"] == pytest.approx(recall[i])
        assert s[f"f1/{name}"] == pytest.approx(f1[i])
    assert s["macro_precision"] == pytest.approx(
        metrics.precision_score(truth, predicted, average="macro", zero_division=0)
    )
    assert s["macro_recall"] == pytest.approx(
        metrics.recall_score(truth, predicted, average="macro", zero_division=0)
    )
    assert s["macro_f1"] == pytest.approx(
        metrics.f1_score(truth, predicted, average="macro", zero_division=0)
    )
    assert out["confusion_matrix"] == metrics.confusion_matrix(truth, predicted).tolist()

    # threshold curves: one-vs-rest rates at or above each threshold; AUC as scikit-learn's
    for i, name in enumerate(classes):
        curve = out["threshold_curves"][name]
        assert curve["true_reject_rate"][0] == 1.0 and curve["false_reject_rate"][0] == 1.0
        positive, negative = scores[truth == i, i], scores[truth != i, i]
        for k in (10, 50, 90):
            t = curve["threshold"][k]
            assert curve["true_reject_rate"][k] == pytest.approx((positive >= t).mean())
            assert curve["false_reject_rate"][k] == pytest.approx((negative >= t).mean())
        auc = -np.trapezoid(curve["true_reject_rate"], curve["false_reject_rate"])
        assert auc == pytest.approx(metrics.roc_auc_score(truth == i, scores[:, i]), abs=0.02)


def test_segmentation_metrics_match_scikit_learn() -> None:
    from brevpipe.reports.metrics import segmentation_metrics

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (4, 16, 16))
    noise = rng.integers(0, 3, truth.shape)
    predicted = np.where(rng.uniform(size=truth.shape) < 0.7, truth, noise)
    out = segmentation_metrics(truth, predicted, ["background", "scratch", "dent"])
    flat_t, flat_p = truth.ravel(), predicted.ravel()
    iou = metrics.jaccard_score(flat_t, flat_p, average=None)
    dice = metrics.f1_score(flat_t, flat_p, average=None)
    for i, name in enumerate(["background", "scratch", "dent"]):
        assert out[f"iou/{name}"] == pytest.approx(iou[i])
        assert out[f"dice/{name}"] == pytest.approx(dice[i])
    assert out["mean_iou"] == pytest.approx(iou.mean())
    assert out["pixel_accuracy"] == pytest.approx(metrics.accuracy_score(flat_t, flat_p))


@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_metrics_match_scikit_learn(seed: int) -> None:
    from brevpipe.data.encoder import MultiHotEncoder
    from brevpipe.reports.metrics import multilabel_metrics

    rng = np.random.default_rng(seed)
    classes = ["circle", "square", "triangle"]
    truth = (rng.uniform(size=(150, 3)) < 0.4).astype(int)
    scores = np.clip(0.6 * truth + rng.uniform(-0.1, 0.5, (150, 3)), 0.001, 0.999)
    encoder = MultiHotEncoder(classes=classes, threshold=0.5).fit([])
    predicted = encoder.decide(scores)
    out = multilabel_metrics(truth, predicted, scores, classes)
    s = out["scalars"]

    assert s["accuracy"] == pytest.approx(metrics.accuracy_score(truth, predicted))  # exact match
    assert s["hamming_loss"] == pytest.approx(metrics.hamming_loss(truth, predicted))
    assert s["loss"] == pytest.approx(
        np.mean([metrics.log_loss(truth[:, i], scores[:, i]) for i in range(3)]), rel=1e-6
    )
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        truth, predicted, zero_division=0
    )
    for i, name in enumerate(classes):
        assert s[f"precision/{name}"] == pytest.approx(precision[i])
        assert s[f"recall/{name}"] == pytest.approx(recall[i])
        assert s[f"f1/{name}"] == pytest.approx(f1[i])
        tn, fp, fn, tp = metrics.confusion_matrix(truth[:, i], predicted[:, i]).ravel()
        assert out["label_counts"][name] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert s["macro_f1"] == pytest.approx(
        metrics.f1_score(truth, predicted, average="macro", zero_division=0)
    )
    assert encoder.decode(scores[:3]) == [
        tuple(c for c, v in zip(classes, row, strict=True) if v >= 0.5) for row in scores[:3]
    ]
