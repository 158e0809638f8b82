"""Segmentation masks: from mask images (a class per colour or per index) or annotation JSON.

A mask is an int32 ``[height, width, 1]`` tensor of class indices (0 is usually background),
made at the image's own size and then cropped, resized and augmented exactly like the image.

Annotation JSON (one file per image; coordinates in image pixels)::

    {"annotations": [
        {"label": "scratch", "type": "polygon", "points": [[x, y], [x, y], ...]},
        {"label": "dent", "type": "rectangle", "points": [[x0, y0], [x1, y1]]}
    ]}

``points`` may also be ``[{"x": .., "y": ..}, ...]``; later annotations paint over earlier ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from brevpipe.errors import ConfigError, DataError
from brevpipe.io import storage


def _points(raw: Sequence[Any]) -> list[tuple[float, float]]:
    return [(float(p["x"]), float(p["y"])) if isinstance(p, Mapping) else (float(p[0]), float(p[1]))
            for p in raw]  # fmt: skip


@dataclass
class MaskLoader:
    """Reads the mask of a sample from its ``mask_path``.

    ``classes``: class names by index (``classes[0]`` is what unlabelled pixels get).
    ``colors``: ``{class: [r, g, b]}`` for colour mask images; without it a mask image's
    grey value is the class index. ``.json`` files are annotations (see the module doc).
    Pixels of a colour not listed are class 0.
    """

    classes: Sequence[str]
    colors: Mapping[str, Sequence[int]] | None = None

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        if len(self.classes) < 2:
            raise ConfigError("segmentation classes: give at least background and one class.")
        if self.colors:
            unknown = sorted(set(self.colors) - set(self.classes))
            if unknown:
                raise ConfigError(f"segmentation colors: {unknown} are not in classes.")
        self.index = {c: i for i, c in enumerate(self.classes)}

    def rasterize(self, document: Mapping[str, Any], height: int, width: int) -> np.ndarray:
        """Annotation JSON -> ``[height, width, 1]`` int32 class indices."""
        canvas = Image.new("I", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for annotation in document.get("annotations", []):
            label = str(annotation.get("label"))
            if label not in self.index:
                raise DataError(
                    f"annotation label '{label}' is not one of the segmentation classes "
                    f"{self.classes}."
                )
            points = _points(annotation.get("points", []))
            kind = annotation.get("type", "polygon")
            if kind == "rectangle" and len(points) == 2:
                draw.rectangle([points[0], points[1]], fill=self.index[label])
            elif kind == "polygon" and len(points) >= 3:
                draw.polygon(points, fill=self.index[label])
            else:
                raise DataError(f"annotation of type {kind!r} with {len(points)} points; "
                                "use a polygon (3+ points) or a rectangle (2 points).")  # fmt: skip
        return np.asarray(canvas, dtype=np.int32)[..., np.newaxis]

    def _from_image(self, mask: np.ndarray) -> np.ndarray:
        if not self.colors:
            return mask[..., :1].astype(np.int32)
        out = np.zeros(mask.shape[:2] + (1,), np.int32)
        for name, colour in self.colors.items():
            hit = np.all(mask[..., :3] == np.asarray(colour, dtype=mask.dtype), axis=-1)
            out[hit, 0] = self.index[name]
        return out

    def load(self, data: Any, is_json: Any, height: Any, width: Any) -> Any:
        """tf graph function: mask bytes -> int32 ``[height, width, 1]`` at the image's size."""
        import tensorflow as tf

        def build(raw: Any, as_json: Any, h: Any, w: Any) -> np.ndarray:
            raw = raw if isinstance(raw, bytes) else raw.item()
            if bool(as_json):
                return self.rasterize(json.loads(raw), int(h), int(w))
            channels = 3 if self.colors else 1
            mask = tf.io.decode_image(raw, channels=channels, expand_animations=False).numpy()
            if mask.shape[:2] != (int(h), int(w)):
                raise DataError(f"mask is {mask.shape[1]}x{mask.shape[0]} pixels but its image "
                                f"is {int(w)}x{int(h)}.")  # fmt: skip
            return self._from_image(mask)

        mask = tf.numpy_function(build, [data, is_json, height, width], tf.int32, stateful=False)
        mask.set_shape([None, None, 1])
        return mask


def attach_masks(
    samples: pd.DataFrame, mask_url: str | None = None, suffix: str = ".png"
) -> pd.DataFrame:
    """Add ``mask_path``: ``<mask_url>/<folder>/<image stem><suffix>`` (a mirror tree of mask
    images or ``.json`` annotations), or beside the image when ``mask_url`` is not given.
    Samples whose mask does not exist are an error that lists a few of them."""
    rows = []
    for path, folder in zip(samples["path"], samples["folder"], strict=True):
        stem = PurePosixPath(path).stem
        base = storage.join(mask_url, folder) if mask_url else str(PurePosixPath(path).parent)
        rows.append(storage.join(base, stem + suffix))
    missing = [m for m in rows if not storage.exists(m)]
    if missing:
        raise DataError(f"{len(missing)} mask(s) not found, e.g. {', '.join(missing[:3])}; "
                        "check the mask URL and suffix.")  # fmt: skip
    return samples.assign(mask_path=rows)
