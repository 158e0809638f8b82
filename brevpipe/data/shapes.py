"""The built-in ``shapes`` dataset: small synthetic images of geometric shapes.

Generated once, deterministically from its parameters, into a local cache folder, so that
``brevpipe run`` needs no data and no network.
"""

from __future__ import annotations

import io
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

from brevpipe.config import stable_hash
from brevpipe.data.samples import find_samples

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


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``kind`` with random colours, size, position, rotation and noise."""
    background = rng.integers(0, 96, 3)  # dark, like parts on a conveyor
    foreground = rng.integers(144, 256, 3)  # bright: always contrasts
    image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    r = size * rng.uniform(0.18, 0.38)
    cx, cy = rng.uniform(r, size - r, 2)
    colour = tuple(int(c) for c in foreground)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=colour)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@dataclass
class ShapesDataset:
    """Synthetic folder-per-class dataset; PNG and JPEG files in turn (``formats``)."""

    name: str = "shapes"
    classes: Sequence[str] = field(default_factory=lambda: ["circle", "square", "triangle"])
    samples_per_class: int = 200
    image_size: int = 64
    seed: int = 0
    formats: Sequence[str] = field(default_factory=lambda: ["png", "jpg"])  # used in turn
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self.classes = list(self.classes)
        self.formats = [str(f).lower() for f in self.formats]
        if not self.formats or set(self.formats) - {"png", "jpg"}:
            raise ValueError(f"dataset.formats={self.formats}: use png and/or jpg.")
        unknown = sorted(set(self.classes) - set(SHAPES))
        if unknown:
            raise ValueError(f"dataset.classes: unknown shapes {unknown}; choose from {SHAPES}.")

    @property
    def identity(self) -> dict:
        """What determines the images (everything but where they are cached)."""
        params = {k: v for k, v in asdict(self).items() if k != "cache_dir"}
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
            for class_index, kind in enumerate(self.classes):
                (staging / kind).mkdir()
                rng = np.random.default_rng([self.seed, class_index])
                for i in range(self.samples_per_class):
                    image = draw_shape(kind, self.image_size, rng)
                    buffer = io.BytesIO()
                    suffix = self.formats[i % len(self.formats)]
                    if suffix == "jpg":
                        image.save(buffer, format="JPEG", quality=92)
                    else:
                        image.save(buffer, format="PNG")
                    (staging / kind / f"{kind}_{i:04d}.{suffix}").write_bytes(buffer.getvalue())
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
        return find_samples(str(self.generate()), dataset=self.name)
