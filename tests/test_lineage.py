"""Dataset lineage (one digest for the exact data a job used) and job tags."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brevpipe.data.lineage import dataset_record
from brevpipe.data.samples import find_samples
from brevpipe.data.shapes import ShapesDataset
from brevpipe.data.split import SampleSplit
from brevpipe.engine.runner import run_job
from brevpipe.errors import ConfigError
from brevpipe.io import storage
from brevpipe.jobs.records import list_jobs
from brevpipe.jobs.tags import check_tags


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    return ShapesDataset(samples_per_class=12, image_size=24, cache_dir=str(cache)).generate()


def record_of(url: str, seed: int = 3) -> dict:
    return dataset_record(SampleSplit(seed=seed).assign(find_samples(url)))


def test_digest_is_the_same_from_a_local_folder_and_from_s3(
    shapes_folder: Path, s3_bucket: str
) -> None:
    storage.upload(shapes_folder, f"{s3_bucket}/parts")
    local, remote = record_of(str(shapes_folder)), record_of(f"{s3_bucket}/parts")
    assert remote["digest"] == local["digest"]
    assert (remote["samples"], remote["split"]) == (local["samples"], local["split"])
    assert remote["source"] == [f"{s3_bucket}/parts"] and local["source"] == [str(shapes_folder)]
    assert local["count"] == 36


def test_digest_changes_with_one_file_a_label_or_the_split(
    shapes_folder: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(shapes_folder, tmp_path / "copy"))
    before = record_of(str(copy))
    assert record_of(str(copy)) == before  # listed again: the same
    image = sorted((copy / "circle").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")  # one byte more in one file
    changed = record_of(str(copy))
    assert changed["digest"] != before["digest"] and changed["samples"] != before["samples"]
    assert changed["split"] == before["split"]  # same names, same purposes
    image.rename(copy / "square" / image.name)  # the same file, relabelled
    assert record_of(str(copy))["samples"] not in (before["samples"], changed["samples"])
    other_split = record_of(str(shapes_folder), seed=4)  # the same files, another split
    assert other_split["samples"] == record_of(str(shapes_folder))["samples"]
    assert other_split["split"] != record_of(str(shapes_folder))["split"]
    assert other_split["digest"] != record_of(str(shapes_folder))["digest"]


@pytest.mark.parametrize("bad", ["line 3", "-x", "a" * 65, "é", "a/b", "", "x\ny"])
def test_a_bad_tag_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError, match="is not a tag"):
        check_tags([bad])


def test_tags_must_be_a_list_and_at_most_32() -> None:
    with pytest.raises(ConfigError, match="give a list"):
        check_tags("line3")
    with pytest.raises(ConfigError, match="at most 32"):
        check_tags([f"t{i}" for i in range(33)])
    assert check_tags(["b", "a", "b"]) == ["a", "b"]


def test_tags_and_digest_are_recorded_listed_and_filtered(tiny_config, tmp_path: Path) -> None:
    tagged = run_job(tiny_config("trainer.epochs=1", "job.tags=[line3,night-shift]",
                                 "tracking=none"))  # fmt: skip
    plain = run_job(tiny_config("trainer.epochs=1", "tracking=none", "seed=5"))
    output = storage.read_json(tagged.output_url)
    assert output["job"]["tags"] == ["line3", "night-shift"]
    digest = output["dataset"]["digest"]
    assert len(digest) == 16 and output["dataset"]["count"] == 48
    root = str(tmp_path / "jobs")
    assert [r.id for r in list_jobs(root, tags=["line3"])] == [tagged.id]
    assert [r.id for r in list_jobs(root, tags=["line3", "other"])] == []
    assert [r.id for r in list_jobs(root, dataset=digest[:6])] == [tagged.id]
    assert storage.read_json(plain.output_url)["dataset"]["digest"] != digest  # another seed
    listed = subprocess.run(
        [sys.executable, "-m", "brevpipe", "jobs", "list", "--root", root, "--tag", "night-shift",
         "--format", "json"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    [row] = json.loads(listed)
    assert row["id"] == tagged.id and row["tags"] == ["line3", "night-shift"]
    assert row["dataset"] == digest
    shown = subprocess.run([sys.executable, "-m", "brevpipe", "jobs", "show", tagged.id, "--root",
                            root], capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "line3, night-shift" in shown and digest in shown


def test_a_bad_tag_fails_before_the_job_exists(tiny_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'bad tag' is not a tag"):
        run_job(tiny_config("job.tags=[ok,'bad tag']", "tracking=none"))
    assert not (tmp_path / "jobs").exists()
