"""Sample discovery, the built-in dataset and the split."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brevpipe.data.samples import find_samples, samples_from_csv, samples_to_csv, summarize
from brevpipe.data.shapes import ShapesDataset
from brevpipe.data.split import SampleSplit, identification_table
from brevpipe.errors import ConfigError, DataError
from brevpipe.io import storage


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    return ShapesDataset(samples_per_class=30, image_size=24, cache_dir=str(cache)).generate()


def file_digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_shapes_dataset_is_deterministic_and_mixes_png_and_jpeg(
    shapes_folder: Path, tmp_path: Path
) -> None:
    again = ShapesDataset(samples_per_class=30, image_size=24, cache_dir=str(tmp_path)).generate()
    assert file_digests(again) == file_digests(shapes_folder)
    suffixes = {p.suffix for p in shapes_folder.rglob("*.*") if p.name != "dataset.json"}
    assert suffixes == {".png", ".jpg"}
    other_seed = ShapesDataset(samples_per_class=30, image_size=24, seed=1, cache_dir=str(tmp_path))
    assert file_digests(other_seed.generate()) != file_digests(shapes_folder)


def test_find_samples_columns_categories_and_content_etags(shapes_folder: Path) -> None:
    samples = find_samples(str(shapes_folder), dataset="shapes")
    assert list(samples.columns) == ["path", "category", "folder", "dataset", "dataset_id", "etag"]
    assert len(samples) == 90
    assert set(samples["category"]) == {("circle",), ("square",), ("triangle",)}
    first = samples.iloc[0]
    assert first["etag"] == hashlib.md5(Path(first["path"]).read_bytes()).hexdigest()
    assert samples["path"].is_monotonic_increasing


def test_class_mapping_and_class_filter(shapes_folder: Path) -> None:
    mapped = find_samples(
        str(shapes_folder), class_mapping={"square": ["square", "angular"], "triangle": "angular"}
    )
    assert set(mapped["category"]) == {("circle",), ("square", "angular"), ("angular",)}
    only = find_samples(str(shapes_folder), classes=["circle"])
    assert set(only["category"]) == {("circle",)} and len(only) == 30


def test_sample_table_csv_round_trip(shapes_folder: Path) -> None:
    samples = find_samples(str(shapes_folder))
    back = samples_from_csv(samples_to_csv(samples))
    pd.testing.assert_frame_equal(back, samples.astype({"dataset_id": str}), check_dtype=False)


def test_missing_url_and_empty_folder_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist or is not a folder.*dataset.url"):
        find_samples(str(tmp_path / "nope"))
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    (tmp_path / "empty" / "class_a" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no images .* in class folders under"):
        find_samples(str(tmp_path / "empty"))


def test_s3_discovery_matches_local_and_uses_plain_md5_etags(
    shapes_folder: Path, s3_bucket: str
) -> None:
    storage.upload(shapes_folder, f"{s3_bucket}/shapes")
    remote = find_samples(f"{s3_bucket}/shapes")
    local = find_samples(str(shapes_folder))
    assert remote["path"].str.startswith(f"{s3_bucket}/shapes/").all()
    assert remote["etag"].tolist() == local["etag"].tolist()
    assert remote["category"].tolist() == local["category"].tolist()


def split_counts(samples: pd.DataFrame) -> pd.Series:
    return samples.groupby(["category", "purpose"]).size()


def test_split_fractions_per_stratum_and_seeded(shapes_folder: Path) -> None:
    samples = find_samples(str(shapes_folder))
    splitter = SampleSplit(fractions={"train": 0.6, "devel": 0.2, "test": 0.2}, seed=5)
    first = splitter.assign(samples)
    assert first["purpose"].tolist() == splitter.assign(samples)["purpose"].tolist()
    for _, stratum in first.groupby("category"):
        counts = stratum["purpose"].value_counts()
        for purpose, fraction in {"train": 0.6, "devel": 0.2, "test": 0.2}.items():
            assert abs(counts.get(purpose, 0) - fraction * len(stratum)) <= 1
    other = SampleSplit(fractions={"train": 0.6, "devel": 0.2, "test": 0.2}, seed=6).assign(samples)
    assert other["purpose"].tolist() != first["purpose"].tolist()


def test_duplicates_share_a_purpose(shapes_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dups"
    shutil.copytree(shapes_folder, folder)
    for image in sorted((folder / "circle").glob("*.png"))[:10]:
        shutil.copy(image, image.with_name("copy_" + image.name))
    samples = find_samples(str(folder))
    assigned = SampleSplit(fractions={"train": 0.5, "devel": 0.5}, seed=1).assign(samples)
    assert (assigned.groupby("etag")["purpose"].nunique() == 1).all()
    assert (assigned.groupby("etag").size() == 2).sum() == 10


def test_adding_samples_never_moves_old_ones(shapes_folder: Path) -> None:
    samples = find_samples(str(shapes_folder))
    old = samples.sample(frac=0.8, random_state=0)
    splitter = SampleSplit(fractions={"train": 0.7, "devel": 0.3}, seed=2)
    before = splitter.assign(old)
    after = splitter.assign(samples, previous=before)
    merged = after.merge(before[["path", "purpose"]], on="path", suffixes=("", "_before"))
    assert len(merged) == len(before)
    assert (merged["purpose"] == merged["purpose_before"]).all()
    assert after["purpose"].notna().all() and len(after) == len(samples)


def test_summary_counts_and_fingerprint(shapes_folder: Path) -> None:
    samples = SampleSplit(seed=1).assign(find_samples(str(shapes_folder)))
    summary = summarize(samples)
    assert summary["count"] == 90
    assert sum(summary["by_purpose"].values()) == 90
    assert summary["fingerprint"] == summarize(samples.iloc[::-1])["fingerprint"]


def test_uniqueness_regex_keeps_a_part_together(shapes_folder: Path) -> None:
    samples = find_samples(str(shapes_folder))
    # "part" = the image number's tens digit: circle_0012 and square_0015 are part "1"
    splitter = SampleSplit(fractions={"train": 0.5, "devel": 0.5}, uniqueness=["etag"],
                           uniqueness_regex=r"_00(\d)\d\.", stratify=[], seed=4)  # fmt: skip
    assigned = splitter.assign(samples)
    part = assigned["path"].str.extract(r"_00(\d)\d\.")[0]
    assert (assigned.groupby(part)["purpose"].nunique() == 1).all()
    assert assigned["purpose"].nunique() == 2


def test_stratify_regex_balances_each_stratum(shapes_folder: Path) -> None:
    samples = find_samples(str(shapes_folder))
    assigned = SampleSplit(fractions={"train": 0.5, "devel": 0.5}, stratify=[],
                           stratify_regex=r"\.(png|jpg)$", seed=2).assign(samples)  # fmt: skip
    by_format = assigned.groupby([assigned["path"].str[-3:], "purpose"]).size()
    assert by_format.to_dict() == {("jpg", "devel"): 22, ("jpg", "train"): 23,
                                   ("png", "devel"): 22, ("png", "train"): 23}  # fmt: skip
    with pytest.raises(ConfigError, match="stratify_regex: invalid regular expression"):
        SampleSplit(stratify_regex="(unclosed")


def test_removed_samples_are_remembered_and_return_to_their_purpose(shapes_folder: Path) -> None:
    samples = find_samples(str(shapes_folder))
    splitter = SampleSplit(fractions={"train": 0.5, "devel": 0.5}, seed=8)
    first = splitter.assign(samples)
    persisted = identification_table(first, ["etag"])
    fewer = samples.iloc[10:]
    second = splitter.assign(fewer, previous=persisted)
    remembered = identification_table(second, ["etag"], previous=persisted)
    assert len(remembered) == len(samples)
    assert (~remembered["present"]).sum() == 10
    back = splitter.assign(samples, previous=remembered)
    assert back["purpose"].tolist() == first["purpose"].tolist()


def test_s3_listing_is_paginated_not_one_request_per_file(s3_bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe({f"{s3_bucket}/many/c{i % 2}/img{i:05d}.PNG": b"%d" % i for i in range(1200)})
    requests: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: requests.append(record.getMessage())  # type: ignore[method-assign]
    server_log = logging.getLogger("werkzeug")  # moto's server logs every request it serves
    level = server_log.level
    server_log.addHandler(handler)
    server_log.setLevel(logging.INFO)
    try:
        samples = find_samples(f"{s3_bucket}/many")
    finally:
        server_log.removeHandler(handler)
        server_log.setLevel(level)
    assert len(samples) == 1200, "upper-case extensions count too"
    assert sum("list-type=2" in r for r in requests) <= 4, requests
    assert len(requests) <= 6, "etags come from the listing: no request per object"
    assert samples["etag"].iloc[0] == hashlib.md5(b"0").hexdigest()


def test_memory_filesystem_discovery(shapes_folder: Path) -> None:
    storage.upload(shapes_folder, "memory://discovery/shapes")
    remote = find_samples("memory://discovery/shapes")
    assert remote["path"].str.startswith("memory:///discovery/shapes/").all()  # fsspec's form
    assert storage.read_bytes(remote["path"].iloc[0]).startswith(b"\x89PNG")
    assert remote["etag"].tolist() == find_samples(str(shapes_folder))["etag"].tolist()


def test_tile2d_grid_layout() -> None:
    from brevpipe.data.visual import preview_png, tile2d

    images = np.stack([np.full((4, 6, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = tile2d(images, columns=3, padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    assert (grid[1:5, 1:7] == 10).all() and (grid[6:10, 8:14] == 50).all()
    assert (grid[6:10, 15:21] == 255).all(), "empty cells keep the background"
    assert preview_png(images.astype(np.float32), ["a", "b", "c", "d", "e"]).startswith(b"\x89PNG")
