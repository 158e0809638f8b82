"""What a user would write instead of ``brevpipe run``: the default job as a plain Keras script.

Keras's folder loader (``image_dataset_from_directory``, 80/20 split, as Keras's image
classification tutorial loads, caches and prefetches it), brevpipe's own ``small_cnn`` so that
the compute is the same, Adam with a cosine schedule from 3e-3, 15 epochs of batches of 32,
evaluate on the held-out images, ``model.save``. bench/job_overhead.py times it against the
default ``brevpipe run``.

    .venv/bin/python bench/plain_keras_job.py FOLDER OUT_DIR [--seed 42] [--epochs 15]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import tensorflow as tf
from first_step import clock  # bench/first_step.py

from brevpipe.models.small_cnn import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="one folder per class (the shapes dataset)")
    parser.add_argument("out", help="where model.keras goes")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    train, devel = keras.utils.image_dataset_from_directory(
        args.folder, validation_split=0.2, subset="both", seed=args.seed,
        image_size=(64, 64), batch_size=32, label_mode="categorical",
    )  # fmt: skip
    classes = len(train.class_names)
    autotune = tf.data.AUTOTUNE
    train = train.map(lambda x, y: (x / 255.0, y), num_parallel_calls=autotune)
    devel = devel.map(lambda x, y: (x / 255.0, y), num_parallel_calls=autotune)
    train, devel = train.cache().prefetch(autotune), devel.cache().prefetch(autotune)

    model = build((64, 64, 3), classes)
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=args.epochs * len(train))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    model.fit(train, validation_data=devel, epochs=args.epochs, verbose=2,
              callbacks=[clock()])  # fmt: skip
    scores = model.evaluate(devel, verbose=0, return_dict=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    model.save(Path(args.out) / "model.keras")
    print(f"devel accuracy {scores['accuracy']:.4f}")


if __name__ == "__main__":
    main()
