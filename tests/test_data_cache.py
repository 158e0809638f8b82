"""The data cache that jobs share (runtime.cache_root): the same values with and without it,
content keys, concurrent writers, least-recently-used eviction, S3 roots, the command."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brevpipe.data import image_cache
from brevpipe.data.encoder import OneHotEncoder
from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.sampler import Sampler
from brevpipe.data.samples import find_samples
from brevpipe.engine.dag import Pipeline
from brevpipe.engine.runner import resolve_config, run_job
from brevpipe.io import cache
from brevpipe.io.cache import DataCache
from tests.conftest import preset


def write_images(folder: Path, count: int = 12, side: int = 40) -> Path:
    """JPEGs and PNGs in two class folders (a 40-px JPEG decodes at 1/1 and is resized)."""
    rng = np.random.default_rng(3)
    for i in range(count):
        pixels = rng.integers(0, 256, (side, side + 8, 3), dtype=np.uint8)
        target = folder / f"c{i % 2}"
        target.mkdir(parents=True, exist_ok=True)
        suffix = ".png" if i % 3 == 0 else ".jpg"
        Image.fromarray(pixels).save(target / f"{i:03d}{suffix}")
    return folder


def pipeline(samples: pd.DataFrame, size: int | list[int] = 24, **kwargs) -> InputPipeline:
    from brevpipe.api import instantiate

    return InputPipeline(
        samples, ImageLoader(target_size=size if isinstance(size, list) else [size, size]),
        encoder=OneHotEncoder().fit(samples["category"]),
        augmenter=instantiate(preset("augmenter", "tf_strong")),
        sampler=Sampler(shuffle=True, seed=5), batch_size=4, seed=5, **kwargs,
    )  # fmt: skip


def epoch_bytes(pipe: InputPipeline) -> list[bytes]:
    return [images.tobytes() + labels.tobytes()
            for images, labels in pipe.get_dataset(epochs=2).as_numpy_iterator()]  # fmt: skip


def entries(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted((root / "images").rglob("*")) if p.is_file()}  # fmt: skip


def test_cold_and_warm_cache_give_the_bytes_of_no_cache(tmp_path: Path) -> None:
    samples = find_samples(str(write_images(tmp_path / "data")))
    plain = epoch_bytes(pipeline(samples))
    cache.configure(str(tmp_path / "cache"))
    cold = pipeline(samples)
    assert epoch_bytes(cold) == plain
    assert (cold.cached_images().hits, cold.cached_images().decoded) == (0, len(samples))
    written = entries(tmp_path / "cache")
    assert len(written) == len(samples)
    warm = pipeline(samples)
    assert epoch_bytes(warm) == plain
    assert (warm.cached_images().hits, warm.cached_images().decoded) == (len(samples), 0)
    assert entries(tmp_path / "cache") == written, "a hit rewrites nothing"
    assert {len(data) for data in written.values()} == {24 * 24 * 3 * 4}, "resized: float32"
    # at the files' own size the decode gives whole numbers: uint8 entries, losslessly
    own_size = epoch_bytes(pipeline(samples, size=[40, 48], shared_cache=False))
    assert epoch_bytes(pipeline(samples, size=[40, 48])) == own_size
    assert epoch_bytes(pipeline(samples, size=[40, 48])) == own_size
    assert len(list((tmp_path / "cache" / "images").rglob("*.u8"))) == len(samples)


def test_whole_number_images_are_stored_as_uint8() -> None:
    whole = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    assert image_cache.entry_bytes(whole) == ("u8", whole.astype(np.uint8).tobytes())
    half = whole + 0.5
    assert image_cache.entry_bytes(half)[0] == "f32"
    assert image_cache.entry_bytes(whole * 30)[0] == "f32", "over 255 is not uint8"


def test_a_changed_file_never_reads_a_stale_entry(tmp_path: Path) -> None:
    data = write_images(tmp_path / "data")
    cache.configure(str(tmp_path / "cache"))
    samples = find_samples(str(data))
    first = pipeline(samples)
    epoch_bytes(first)
    changed = sorted(data.rglob("*.png"))[0]
    Image.fromarray(np.full((40, 48, 3), 7, np.uint8)).save(changed)
    again = find_samples(str(data))
    assert again.loc[again["path"] == str(changed), "etag"].item() != \
        samples.loc[samples["path"] == str(changed), "etag"].item()  # fmt: skip
    second = pipeline(again)
    assert (second.cached_images().hits, second.cached_images().decoded) == (len(samples) - 1, 1)
    cache.configure(None)
    assert epoch_bytes(second) == epoch_bytes(pipeline(again))


def test_the_listing_is_hashed_once_and_again_when_a_file_changes(tmp_path: Path) -> None:
    data = write_images(tmp_path / "data")
    cache.configure(str(tmp_path / "cache"))
    first = find_samples(str(data))
    (listing,) = (tmp_path / "cache" / "listings").glob("*.json")
    recorded = json.loads(listing.read_text())["md5"]
    assert recorded == first["etag"].tolist()
    pd.testing.assert_frame_equal(find_samples(str(data)), first)
    victim = sorted(data.rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # a new size and time: a new listing key
    third = find_samples(str(data))
    assert len(list((tmp_path / "cache" / "listings").glob("*.json"))) == 2
    changed = third["path"] == str(victim)
    assert (third.loc[changed, "etag"] != first.loc[changed, "etag"]).all()
    assert (third.loc[~changed, "etag"] == first.loc[~changed, "etag"]).all()


def _fill(root: str, folder: str, seed: int) -> None:
    cache.configure(root)
    samples = find_samples(folder)
    pipeline(samples.sample(frac=1.0, random_state=seed)).cached_images()


def test_concurrent_jobs_filling_the_same_keys_leave_whole_entries(tmp_path: Path) -> None:
    data = write_images(tmp_path / "data", count=24)
    root = str(tmp_path / "cache")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_fill, args=(root, str(data), seed)) for seed in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    written = entries(tmp_path / "cache")
    assert len(written) == 24 and not list((tmp_path / "cache").rglob("*.tmp-*"))
    cache.configure(root)
    samples = find_samples(str(data))
    warm = pipeline(samples)
    assert warm.cached_images().decoded == 0
    cache.configure(None)
    assert epoch_bytes(warm) == epoch_bytes(pipeline(samples))


def test_jobs_in_two_threads_of_one_process_each_fill_their_own_cache(tmp_path: Path) -> None:
    """The active data cache belongs to the thread that configured it (a notebook, a launcher
    or the dashboard may run two jobs side by side): neither sees the other's."""
    import threading

    data = write_images(tmp_path / "data", count=6)
    samples = find_samples(str(data))
    pipelines = {"one": pipeline(samples), "two": pipeline(samples)}  # composed here: Hydra
    seen: dict[str, object] = {}
    ready = threading.Barrier(2)

    def job(name: str) -> None:
        try:
            configured = cache.configure(str(tmp_path / name))
            ready.wait(timeout=60)  # both caches are set before either pipeline reads its own
            decoded = pipelines[name].cached_images().decoded
            seen[name] = (cache.active() is configured, decoded)
        except Exception as exc:  # noqa: BLE001 - shown by the assertion below
            seen[name] = exc

    threads = [threading.Thread(target=job, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert seen == {"one": (True, 6), "two": (True, 6)}  # each decoded into its own root
    assert len(entries(tmp_path / "one")) == len(entries(tmp_path / "two")) == 6
    assert cache.active() is None, "this thread configured none"


def _churn(root: str, worker: int) -> None:
    """Write entries, record their use and evict, over and over, as many jobs at once do."""
    store = DataCache(root, max_bytes=40 * 1000)
    for round_ in range(25):
        name = f"images/churn/{worker:02d}/{round_:04d}.u8"
        store.write_many({name: bytes(1000)})
        store.record_use([name])
        store.evict(keep={name})


def test_jobs_evicting_and_compacting_at_once_never_fail(tmp_path: Path) -> None:
    """Four processes race to list, evict and compact the usage records of one root."""
    root = str(tmp_path / "cache")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_churn, args=(root, i)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    info = DataCache(root).info()
    assert 0 < info["bytes"] <= 40 * 1000 + 4 * 1000, "over the cap only by what jobs kept"
    assert len(list((tmp_path / "cache" / "usage").glob("*.json"))) <= 4 * 17


def test_least_recently_used_entries_go_past_the_cap(tmp_path: Path) -> None:
    samples = find_samples(str(write_images(tmp_path / "data")))
    root = tmp_path / "cache"
    cache.configure(str(root))
    old, recent = pipeline(samples, size=16), pipeline(samples, size=20)
    old.cached_images()
    recent.cached_images()
    pipeline(samples, size=20).cached_images()  # used again: the most recent
    one_set = 12 * 20 * 20 * 3 * 4
    cache.configure(str(root), max_gb=(one_set + 100) / 1e9)
    running = pipeline(samples, size=24)
    running.cached_images()  # writes a third set and evicts, never what it reads itself
    kept = {name.split("/")[1] for name in entries(root)}
    assert kept == {image_cache.loader_key(running.loader)}
    assert all(Path(file).exists() for file in running.cached_images().files)
    usage = list((root / "usage").glob("*.json"))
    assert len(usage) == 1, "usage records compacted into one"
    info = DataCache(str(root)).info()
    assert info["kinds"]["images"] == {"entries": 12, "bytes": 12 * 24 * 24 * 3 * 4}


def test_a_truncated_entry_is_a_miss_and_is_written_again(tmp_path: Path) -> None:
    samples = find_samples(str(write_images(tmp_path / "data")))
    cache.configure(str(tmp_path / "cache"))
    plain = epoch_bytes(pipeline(samples, shared_cache=False))
    epoch_bytes(pipeline(samples))
    victim = sorted((tmp_path / "cache" / "images").rglob("*.f32"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    again = pipeline(samples)
    assert again.cached_images().decoded == 1
    assert epoch_bytes(again) == plain


def test_an_s3_cache_root_and_s3_images(tmp_path: Path, s3_bucket: str) -> None:
    import s3fs

    data = write_images(tmp_path / "data")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(data), f"{s3_bucket}/data", recursive=True)
    samples = find_samples(f"{s3_bucket}/data")
    plain = epoch_bytes(pipeline(samples))
    cache.configure(f"{s3_bucket}/cache")
    assert epoch_bytes(pipeline(samples)) == plain
    warm = pipeline(samples)
    assert epoch_bytes(warm) == plain and warm.cached_images().decoded == 0
    assert len(fs.find(f"{s3_bucket}/cache/images")) == len(samples)
    assert DataCache(f"{s3_bucket}/cache").clear() >= len(samples)
    fs.invalidate_cache()
    assert not fs.find(f"{s3_bucket}/cache/images")


def comparable(output: dict) -> dict:
    """An output.json without what differs between two runs of one config (ids, times, URLs)."""
    text = json.dumps(output, sort_keys=True).replace(output["job"]["id"], "<job>")
    plain = json.loads(text)
    for key in ("job", "mlflow", "environment", "created", "updated", "started", "ended"):
        plain.pop(key, None)
    plain["config"]["runtime"].pop("cache_root", None)
    plain["model"].pop("archive_sha256", None)  # a tar.gz of a SavedModel: differs run to run
    for stage in plain.get("stages", {}).values():
        stage.pop("seconds", None)
        stage.pop("cache_key", None)  # has the code's digest, which may change between runs
    return plain


@pytest.mark.slow
def test_a_job_is_the_same_with_and_without_the_cache(tiny_config, tmp_path: Path) -> None:
    from brevpipe.io import storage

    outputs, predictions = [], []
    for root in ("null", str(tmp_path / "cache"), str(tmp_path / "cache")):  # off, cold, warm
        job = run_job(tiny_config("seed=4", "tracking=none", f"runtime.cache_root={root}"))
        outputs.append(storage.read_json(job.bucket.output))
        table = storage.read_bytes(storage.join(job.bucket.url, "artifacts", "predictions.csv"))
        predictions.append(table.decode().replace(job.id, "<job>"))
    assert comparable(outputs[1]) == comparable(outputs[0])
    assert comparable(outputs[2]) == comparable(outputs[0])
    assert outputs[0]["metrics"] == outputs[1]["metrics"] == outputs[2]["metrics"]
    assert predictions[0] == predictions[1] == predictions[2]
    keys = [Pipeline.from_config(resolve_config(tiny_config(f"runtime.cache_root={root}"))
                                 ["pipeline"]).cache_keys(4, "code") for root in ("null", "x")]
    assert keys[0] == keys[1], "the cache root is not part of any stage's cache key"
    assert DataCache(str(tmp_path / "cache")).info()["kinds"]["images"]["entries"] > 0


def test_the_cache_command(tmp_path: Path) -> None:
    samples = find_samples(str(write_images(tmp_path / "data")))
    cache.configure(str(tmp_path / "cache"))
    pipeline(samples).cached_images()
    command = [sys.executable, "-m", "brevpipe", "cache"]
    info = subprocess.run([*command, "info", "--root", str(tmp_path / "cache"), "--format", "json"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(info.stdout)["kinds"]["images"]["entries"] == len(samples)
    table = subprocess.run([*command, "info", "--root", str(tmp_path / "cache")],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "images" in table and str(tmp_path / "cache") in table
    cleared = subprocess.run([*command, "clear", "--root", str(tmp_path / "cache")],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert cleared.startswith("removed ")
    assert DataCache(str(tmp_path / "cache")).info()["bytes"] == 0
    bad = subprocess.run([*command, "wipe"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    off = subprocess.run([*command, "info", "--root", "none"], capture_output=True, text=True)
    assert off.returncode == 2 and "names no cache" in off.stderr


def test_cache_clear_to_gb_keeps_the_most_recently_used_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from brevpipe.commands import cache as cache_command

    root = str(tmp_path / "cache")
    store = DataCache(root, max_bytes=10**9)
    names = [f"images/lru/{i:02d}.u8" for i in range(6)]
    for name in names:  # 6 entries of 10 kB, used one after another
        store.write_many({name: bytes(10_000)})
        store.record_use([name])
    assert cache_command.main(["clear", "--root", root, "--to-gb", "0.00003"]) == 0  # 30 kB
    assert "removed 3 files" in capsys.readouterr().out
    left = sorted(p.relative_to(root).as_posix() for p in Path(root, "images").rglob("*.u8"))
    assert left == ["images/" + n.removeprefix("images/") for n in names[3:]], left
