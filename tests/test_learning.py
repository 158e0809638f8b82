"""Outcomes, not plumbing: the default job learns the shapes, and the same job on the same
images with their labels shuffled does not (so a pipeline that parted labels from their
images would fail here); in every batch, each label and path is its image's own."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from brevpipe.data.encoder import OneHotEncoder
from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.sampler import Sampler
from brevpipe.data.samples import find_samples
from brevpipe.data.shapes import ShapesDataset
from brevpipe.engine.runner import run_job
from tests.conftest import compose_config, preset

# seeds 1-5 of the default job: devel/accuracy 0.93, 0.93, 0.98, 0.98, 1.00 here; chance is 1/3
LEARNED = 0.9
CHANCE_CEILING = 0.6


def default_job(tmp_path: Path, *dataset: str) -> dict[str, float]:
    """The default job (shapes, small_cnn, 15 epochs) with its files under tmp_path, or on
    another ``dataset``."""
    dataset = dataset or (f"dataset.cache_dir={tmp_path / 'datasets'}",)
    job = run_job(compose_config([f"job.root={tmp_path / 'jobs'}", "tracking=none",
                                  "runtime.verbose=0", *dataset]))  # fmt: skip
    assert job.status == "completed"
    return job.metrics


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_default_job_learns_and_shuffled_labels_do_not(tmp_path: Path) -> None:
    metrics = default_job(tmp_path)
    assert metrics["devel/accuracy"] >= LEARNED, metrics

    # the same images, each moved into a class folder drawn at random: nothing to learn
    generated = next((tmp_path / "datasets").iterdir())
    files = sorted(p for p in generated.rglob("*") if p.is_file())
    classes = sorted({p.parent.name for p in files})
    rng = np.random.default_rng(0)
    shuffled = tmp_path / "shuffled"
    for i, file in enumerate(files):
        target = shuffled / classes[rng.integers(len(classes))] / f"{i:05d}{file.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    metrics = default_job(tmp_path, "dataset=folder", f"dataset.url={shuffled}")
    assert metrics["devel/accuracy"] <= CHANCE_CEILING, metrics


@pytest.mark.parametrize("augmenter", ["none", "albumentations_light"])  # per image, per batch
def test_every_label_and_path_in_a_batch_is_its_images_own(
    tmp_path: Path, augmenter: str
) -> None:
    from brevpipe.api import instantiate

    folder = ShapesDataset(samples_per_class=7, image_size=32, cache_dir=str(tmp_path)).generate()
    samples = find_samples(str(folder))
    encoder = OneHotEncoder().fit(samples["category"])
    pipeline = InputPipeline(
        samples, ImageLoader(target_size=[32, 32]), encoder=encoder, batch_size=4, seed=3,
        sampler=Sampler(shuffle=True, seed=3), output_structure=("label", "path", "index"),
        augmenter=instantiate(preset("augmenter", augmenter)),
    )  # fmt: skip
    expected = encoder.transform(samples["category"])
    seen = []
    for labels, paths, rows in pipeline.get_dataset(epochs=2).as_numpy_iterator():
        np.testing.assert_array_equal(labels, expected[rows])
        assert [p.decode() for p in paths] == samples["path"].iloc[rows].tolist()
        seen += rows.tolist()
    assert sorted(seen) == sorted(list(range(len(samples))) * 2), "each sample once per epoch"
    assert seen[: len(samples)] != seen[len(samples) :], "reshuffled every epoch"
