"""The built-in ``shapes`` dataset: small synthetic images of geometric shapes.

Generated once, deterministically from its parameters, into a local cache folder, so that
``brevpipe run`` needs no data and no network.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from brevpipe.config.compose import stable_hash
from brevpipe.data.samples import find_samples
from brevpipe.data.segmentation import attach_masks

log = logging.getLogger(__name__)
SHAPES = ("circle", "square", "triangle", "star")
# Bump when the drawing code changes, so cached copies of older images are not reused.
GENERATOR_VERSION = 2


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners, radii = 4, [r]
    elif kind == "triangle":
        corners, radii = 3, [r]
    else:  # star
        corners, radii = 10, [r, r * 0.45]
    return [
        (
            cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / corners),
            cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def draw_shapes(
    kinds: Sequence[str], size: int, rng: np.random.Generator, labels: Sequence[int] = ()
) -> tuple[Image.Image, Image.Image]:
    """An image of one shape per entry of ``kinds`` (side by side, never overlapping) with
    random colours, sizes, positions, rotations and noise, and its mask: each shape's pixels
    hold its entry of ``labels`` (default 1, 2, ...), the background 0."""
    background = rng.integers(0, 96, 3)  # dark, like parts on a conveyor
    image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    mask = Image.new("L", (size, size), 0)
    draw, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    cell = size / len(kinds)  # one vertical strip per shape
    for i, kind in enumerate(kinds):
        label = int(labels[i]) if labels else i + 1
        foreground = rng.integers(144, 256, 3)  # bright: always contrasts
        r = min(size * rng.uniform(0.18, 0.38), cell * 0.45)
        cx = i * cell + rng.uniform(r, cell - r)
        cy = rng.uniform(r, size - r)
        colour = tuple(int(c) for c in foreground)
        if kind == "circle":
            box = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(box, fill=colour)
            draw_mask.ellipse(box, fill=label)
        else:
            corners = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
            draw.polygon(corners, fill=colour)
            draw_mask.polygon(corners, fill=label)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), mask


@dataclass
class ShapesDataset:
    """Synthetic folder-per-class dataset; PNG and JPEG files in turn (``formats``).

    ``max_labels`` > 1 makes a multi-label dataset: a folder per combination of up to that many
    classes (``circle+square``), each image showing those shapes side by side; its category is
    the tuple of their names. ``masks`` also writes a segmentation mask per image (PNG, pixel
    value = 1 + the shape's class index, 0 = background): images go under ``images/`` and masks
    under ``masks/``, mirroring it.

    Settings:
    ``name``: the dataset's name in the sample table
    ``classes``: the shapes to draw (circle, square, triangle)
    ``samples_per_class``: images per class
    ``image_size``: side of the square images in pixels
    ``seed``: the generator's seed (null: derived from the job's seed; 0 outside a job)
    ``formats``: file formats used in turn (png, jpg)
    ``cache_dir``: where the files go (null: ~/.cache/brevpipe/datasets)
    ``max_labels``: 2 or more makes a multi-label dataset (use encoder=multihot)
    ``masks``: also write segmentation masks (pipeline=segmentation sets it)
    """

    name: str = "shapes"
    classes: Sequence[str] = field(default_factory=lambda: ["circle", "square", "triangle"])
    samples_per_class: int = 200
    image_size: int = 64
    # null: a job's find_samples stage passes the job's own (ctx.seed_for("dataset")); output.json
    # files from before 2026-11-26 say seed: 0, which keeps generating what they trained on
    seed: int | None = None
    formats: Sequence[str] = field(default_factory=lambda: ["png", "jpg"])  # used in turn
    cache_dir: str | None = None
    max_labels: int = 1
    masks: bool = False

    def __post_init__(self) -> None:
        if self.seed is None:  # built outside a job (a script, a benchmark)
            self.seed = 0
        self.classes = list(self.classes)
        self.formats = [str(f).lower() for f in self.formats]
        if not self.formats or set(self.formats) - {"png", "jpg"}:
            raise ValueError(f"dataset.formats={self.formats}: use png and/or jpg.")
        unknown = sorted(set(self.classes) - set(SHAPES))
        if unknown:
            raise ValueError(f"dataset.classes: unknown shapes {unknown}; choose from {SHAPES}.")
        if not 1 <= int(self.max_labels) <= len(self.classes):
            raise ValueError(f"dataset.max_labels={self.max_labels}: use 1 (single-label) up to "
                             f"the number of classes ({len(self.classes)}).")  # fmt: skip

    @property
    def segmentation_classes(self) -> list[str]:
        """Mask classes by pixel value: ``background`` then the shapes."""
        return ["background", *self.classes]

    @property
    def folders(self) -> dict[str, list[str]]:
        """Folder name -> the classes its images show."""
        combos = [
            list(c)
            for k in range(1, int(self.max_labels) + 1)
            for c in itertools.combinations(self.classes, k)
        ]
        return {"+".join(c): c for c in combos}

    @property
    def identity(self) -> dict:
        """What determines the images (everything but where they are cached)."""
        params = {k: v for k, v in asdict(self).items() if k != "cache_dir"}
        for key, default in (("max_labels", 1), ("masks", False)):  # older caches stay valid
            if params[key] == default:
                del params[key]
        return {**params, "generator_version": GENERATOR_VERSION}

    @property
    def folder(self) -> Path:
        params = self.identity
        root = Path(self.cache_dir or Path("~/.cache/brevpipe/datasets")).expanduser()
        return root.resolve() / f"{self.name}-{stable_hash(params, 10)}"

    def generate(self) -> Path:
        """Write the images once; later calls find them in the cache folder."""
        target = self.folder
        if (target / "dataset.json").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("generating the %s dataset into %s", self.name, target)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        try:
            images = staging / "images" if self.masks else staging
            index = {c: i + 1 for i, c in enumerate(self.classes)}
            for folder_index, (folder, kinds) in enumerate(self.folders.items()):
                (images / folder).mkdir(parents=True)
                if self.masks:
                    (staging / "masks" / folder).mkdir(parents=True)
                rng = np.random.default_rng([self.seed, folder_index])
                for i in range(self.samples_per_class):
                    # several shapes: in a random order across the strips
                    order = list(rng.permutation(kinds)) if len(kinds) > 1 else kinds
                    image, mask = draw_shapes(order, self.image_size, rng,
                                              [index[k] for k in order])  # fmt: skip
                    buffer = io.BytesIO()
                    suffix = self.formats[i % len(self.formats)]
                    if suffix == "jpg":
                        image.save(buffer, format="JPEG", quality=92)
                    else:
                        image.save(buffer, format="PNG")
                    stem = f"{folder.replace('+', '_')}_{i:04d}"
                    (images / folder / f"{stem}.{suffix}").write_bytes(buffer.getvalue())
                    if self.masks:
                        mask.save(staging / "masks" / folder / f"{stem}.png", format="PNG")
            (staging / "dataset.json").write_text(json.dumps(self.identity, indent=2))
            try:
                os.rename(staging, target)
            except OSError:  # another process generated it first
                if not (target / "dataset.json").exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def find_samples(self) -> pd.DataFrame:
        """The sample table; with ``masks``, a ``mask_path`` column too."""
        folder = self.generate()
        mapping = {name: kinds for name, kinds in self.folders.items() if len(kinds) > 1}
        samples = find_samples(str(folder / "images" if self.masks else folder),
                               dataset=self.name, class_mapping=mapping or None)  # fmt: skip
        if self.masks:
            samples = attach_masks(samples, str(folder / "masks"))
        return samples
