"""Input pipeline throughput: brevpipe's tf.data builder against a hand-written tf.data baseline.

Both run in this process on the same files: 1,500 JPEG images 256x256 (generated once into the
cache), decoded, resized to 128x128, rescaled, one-hot encoded, batch 32. Prints images per
second and the ratio brevpipe / baseline; writes them to bench/results/input_pipeline.json.

    .venv/bin/python bench/input_pipeline.py [--epochs 3] [--images-per-class 500]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import tensorflow as tf

from brevpipe.data.encoder import OneHotEncoder
from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.shapes import ShapesDataset

RESULTS = Path(__file__).parent / "results" / "input_pipeline.json"


def baseline(paths: list[str], labels: list[int], classes: int, size: int, batch: int):
    """What a user would write by hand with tf.data."""

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, (size, size), antialias=True) / 255.0
        image.set_shape((size, size, 3))
        return image, tf.one_hot(label, classes)

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def images_per_second(dataset, epochs: int) -> float:
    count = sum(int(x.shape[0]) for x, _ in dataset)  # warm-up epoch (file cache, tracing)
    start = time.perf_counter()
    for _ in range(epochs):
        for _images, _labels in dataset:
            pass
    return count * epochs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    data = ShapesDataset(
        name="bench-jpeg", samples_per_class=args.images_per_class, image_size=256,
        formats=["jpg"],
    )  # fmt: skip
    samples = data.find_samples()
    encoder = OneHotEncoder().fit(samples["category"])
    loader = ImageLoader(target_size=[128, 128], rescale="unit")
    labels = encoder.indices(samples["category"]).tolist()

    paths, classes = samples["path"].tolist(), len(encoder.classes)
    results = {}
    # Interleave the two so that neither gets a systematically warmer machine; report medians.
    for round_ in range(args.rounds):
        hand = baseline(paths, labels, classes, 128, args.batch_size)
        ours = InputPipeline(samples, loader, encoder=encoder, batch_size=args.batch_size)
        ours = ours.get_dataset()
        results.setdefault("baseline", []).append(images_per_second(hand, args.epochs))
        results.setdefault("brevpipe", []).append(images_per_second(ours, args.epochs))
        print(f"round {round_ + 1}: baseline {results['baseline'][-1]:7.0f} img/s   "
              f"brevpipe {results['brevpipe'][-1]:7.0f} img/s")  # fmt: skip
    best = {name: statistics.median(values) for name, values in results.items()}
    ratio = best["brevpipe"] / best["baseline"]
    print(f"median: baseline {best['baseline']:.0f} img/s, brevpipe {best['brevpipe']:.0f} img/s")
    print(f"brevpipe / baseline = {ratio:.3f}  ({len(samples)} JPEG 256->128, batch "
          f"{args.batch_size}, {args.epochs} epochs after a warm-up)")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "input_pipeline", "images": len(samples), "epochs": args.epochs,
        "batch_size": args.batch_size, "median_img_per_s": best, "runs": results, "ratio": ratio,
        "machine": {"python": platform.python_version(), "tensorflow": tf.__version__},
    }, indent=2))  # fmt: skip
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
