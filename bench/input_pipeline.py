"""Input pipeline throughput: brevpipe's tf.data builder against hand-written tf.data baselines.

Everything runs in this process on the same files: 2,000 JPEG images 256x256 (4 classes x 500,
generated once into the cache), decoded, resized to 128x128, rescaled to [0, 1], one-hot
encoded, batch 32. Three comparisons, each interleaved over several rounds (medians):

- ``plain``: no augmentation; brevpipe vs a hand-written ``tf.data`` map.
- ``albumentations_light``: the ``augmenter=albumentations_light`` preset vs a hand-written
  albumentations-in-``tf.numpy_function`` map doing the same transforms, seeded per sample.
- ``s3``: brevpipe reading the same files from moto's S3 server on 127.0.0.1 vs local files
  (first epoch, no cache), and later epochs served from ``cache=memory``.

Prints images per second and ratios; writes them to bench/results/input_pipeline.json.

    .venv/bin/python bench/input_pipeline.py [--rounds 5] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import queue
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from omegaconf import OmegaConf

from brevpipe.data.augment import AlbumentationsAugmenter
from brevpipe.data.encoder import OneHotEncoder
from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.samples import find_samples
from brevpipe.data.shapes import ShapesDataset

RESULTS = Path(__file__).parent / "results" / "input_pipeline.json"
PRESET = Path(__file__).parents[1] / "conf" / "augmenter" / "albumentations_light.yaml"
SIZE = 128


def light_transforms() -> list[dict]:
    return OmegaConf.to_container(OmegaConf.load(PRESET))["transforms"]


def baseline(paths: list[str], labels: list[int], classes: int, batch: int, augment: bool):
    """What a user would write by hand with tf.data (and albumentations, seeded per sample)."""
    import albumentations as A

    pool: queue.SimpleQueue = queue.SimpleQueue()  # one Compose per concurrent call

    def albument(image: np.ndarray, index: np.int64) -> np.ndarray:
        try:
            pipeline = pool.get_nowait()
        except queue.Empty:
            pipeline = A.Compose([getattr(A, t.pop("name"))(**t) for t in light_transforms()])
        pipeline.set_random_seed(int(index))
        out = pipeline(image=np.clip(image / 255.0, 0, 1).astype(np.float32))["image"]
        pool.put(pipeline)
        return (np.clip(out, 0, 1) * 255.0).astype(np.float32)

    def load(index, path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, (SIZE, SIZE), antialias=True)
        if augment:
            image = tf.numpy_function(albument, [image, index], tf.float32, stateful=False)
        image.set_shape((SIZE, SIZE, 3))
        return image / 255.0, tf.one_hot(label, classes)

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths, labels))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def images_per_second(dataset, epochs: int) -> float:
    count = sum(int(x.shape[0]) for x, _ in dataset)  # warm-up epoch (file cache, tracing)
    start = time.perf_counter()
    for _ in range(epochs):
        for _images, _labels in dataset:
            pass
    return count * epochs / (time.perf_counter() - start)


def compare(name: str, rounds: int, make: dict[str, Callable[[], object]], epochs: int) -> dict:
    """Interleave the contenders so that neither gets a systematically warmer machine."""
    runs: dict[str, list[float]] = {key: [] for key in make}
    for round_ in range(rounds):
        for key, factory in make.items():
            runs[key].append(images_per_second(factory(), epochs))
        print(f"{name} round {round_ + 1}: " + "   ".join(
            f"{key} {values[-1]:6.0f} img/s" for key, values in runs.items()
        ))  # fmt: skip
    medians = {key: statistics.median(values) for key, values in runs.items()}
    ratio = medians["brevpipe"] / medians["baseline"]
    print(f"{name}: median baseline {medians['baseline']:.0f} img/s, brevpipe "
          f"{medians['brevpipe']:.0f} img/s, brevpipe / baseline = {ratio:.3f}")  # fmt: skip
    return {"median_img_per_s": medians, "runs": runs, "ratio": ratio}


def s3_comparison(folder: Path, samples, encoder, loader, batch: int) -> dict:
    """brevpipe on moto's S3 server vs local files: first epoch, then cached later epochs."""
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    })  # fmt: skip
    try:
        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        fs.put(str(folder), "bench/shapes", recursive=True)
        start = time.perf_counter()
        remote = find_samples("s3://bench/shapes", dataset="bench")
        listing = time.perf_counter() - start

        def one_epoch(table, cache=None, epochs=1) -> float:
            pipeline = InputPipeline(table, loader, encoder=encoder, batch_size=batch,
                                     cache=cache)  # fmt: skip
            start = time.perf_counter()
            if cache:
                pipeline.decoded_images()  # the first (reading) epoch fills the cache
                start = time.perf_counter()
            count = sum(int(x.shape[0]) for x, _ in pipeline.get_dataset(epochs=epochs))
            return count / (time.perf_counter() - start)

        result = {
            "listing_seconds": listing,
            "local_img_per_s": one_epoch(samples),
            "s3_first_epoch_img_per_s": one_epoch(remote),
            "s3_cached_epochs_img_per_s": one_epoch(remote, cache="memory", epochs=3),
        }
        result["s3_first_epoch_vs_local"] = (
            result["s3_first_epoch_img_per_s"] / result["local_img_per_s"]
        )
        result["s3_cached_vs_local"] = (
            result["s3_cached_epochs_img_per_s"] / result["local_img_per_s"]
        )
        print(f"s3: listing {len(remote)} objects {listing:.2f} s; local "
              f"{result['local_img_per_s']:.0f} img/s, S3 first epoch "
              f"{result['s3_first_epoch_img_per_s']:.0f} img/s "
              f"({result['s3_first_epoch_vs_local']:.3f}x), S3 cached epochs "
              f"{result['s3_cached_epochs_img_per_s']:.0f} img/s "
              f"({result['s3_cached_vs_local']:.3f}x)")  # fmt: skip
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--images-per-class", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-s3", action="store_true")
    args = parser.parse_args()

    data = ShapesDataset(
        name="bench-jpeg", classes=["circle", "square", "triangle", "star"],
        samples_per_class=args.images_per_class, image_size=256, formats=["jpg"],
    )  # fmt: skip
    samples = data.find_samples()
    encoder = OneHotEncoder().fit(samples["category"])
    loader = ImageLoader(target_size=[SIZE, SIZE], rescale="unit")
    labels = encoder.indices(samples["category"]).tolist()
    paths, classes, batch = samples["path"].tolist(), len(encoder.classes), args.batch_size
    print(f"{len(samples)} JPEG 256x256 -> {SIZE}x{SIZE}, batch {batch}, "
          f"{args.epochs} timed epochs after a warm-up, {args.rounds} rounds")  # fmt: skip

    def ours(augmenter=None):
        return InputPipeline(samples, loader, encoder=encoder, augmenter=augmenter,
                             batch_size=batch).get_dataset()  # fmt: skip

    results = {
        "plain": compare("plain", args.rounds, {
            "baseline": lambda: baseline(paths, labels, classes, batch, augment=False),
            "brevpipe": ours,
        }, args.epochs),
        "albumentations_light": compare("albumentations_light", args.rounds, {
            "baseline": lambda: baseline(paths, labels, classes, batch, augment=True),
            "brevpipe": lambda: ours(AlbumentationsAugmenter(light_transforms())),
        }, args.epochs),
    }  # fmt: skip
    if not args.skip_s3:
        results["s3"] = s3_comparison(data.folder, samples, encoder, loader, batch)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "input_pipeline", "images": len(samples), "epochs": args.epochs,
        "batch_size": batch, "rounds": args.rounds, "results": results,
        "targets": {"plain": 0.90, "albumentations_light": 0.80},
        "machine": {"python": platform.python_version(), "tensorflow": tf.__version__,
                    "cpus": os.cpu_count()},
    }, indent=2))  # fmt: skip
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
