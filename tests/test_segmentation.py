"""Segmentation masks stay aligned with their images through load, resize and augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from brevpipe.api import instantiate
from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.sampler import Sampler
from brevpipe.data.segmentation import MaskLoader, attach_masks
from brevpipe.errors import ConfigError, DataError
from tests.conftest import preset

CLASSES = ["background", "box", "wedge"]
COLOURS = {"box": [255, 0, 0], "wedge": [0, 0, 255]}
H, W = 48, 64  # not square: keep_aspect_ratio pads


def draw_scene(rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """A grey image with a bright box and a bright wedge, and their annotations."""
    image = Image.new("L", (W, H), 20)
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.integers(2, 20, 2)
    box = [[int(x0), int(y0)], [int(x0) + 14, int(y0) + 10]]
    wx, wy = rng.integers(30, 45), rng.integers(15, 30)
    wedge = [[int(wx), int(wy)], [int(wx) + 15, int(wy) + 2], [int(wx) + 5, int(wy) + 14]]
    draw.rectangle([tuple(box[0]), tuple(box[1])], fill=230)
    draw.polygon([tuple(p) for p in wedge], fill=230)
    annotations = [
        {"label": "box", "type": "rectangle", "points": box},
        {"label": "wedge", "type": "polygon", "points": [{"x": x, "y": y} for x, y in wedge]},
    ]
    return image.convert("RGB"), annotations


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images/parts/*.png, index masks, colour masks and annotation JSON in mirror trees."""
    root = tmp_path_factory.mktemp("seg")
    rng = np.random.default_rng(0)
    for kind in ("images", "index", "colour", "json"):
        (root / kind / "parts").mkdir(parents=True)
    for i in range(12):
        image, annotations = draw_scene(rng)
        image.save(root / "images" / "parts" / f"part{i}.png")
        index = MaskLoader(CLASSES).rasterize({"annotations": annotations}, H, W)[..., 0]
        Image.fromarray(index.astype(np.uint8)).save(root / "index" / "parts" / f"part{i}.png")
        colour = np.zeros((H, W, 3), np.uint8)
        for name, rgb in COLOURS.items():
            colour[index == CLASSES.index(name)] = rgb
        Image.fromarray(colour).save(root / "colour" / "parts" / f"part{i}.png")
        (root / "json" / "parts" / f"part{i}.json").write_text(
            json.dumps({"annotations": annotations})
        )
    return root


def samples_of(root: Path) -> pd.DataFrame:
    paths = sorted(str(p) for p in (root / "images" / "parts").glob("*.png"))
    return pd.DataFrame({"path": paths, "category": [("part",)] * len(paths), "folder": "parts"})


def augmenter(name: str):
    return instantiate(preset("augmenter", name))


@pytest.mark.parametrize("source", ["index", "colour", "json"])
@pytest.mark.parametrize("aug", ["none", "tf_strong", "albumentations_strong"])
def test_masks_stay_aligned(source: str, aug: str, dataset: Path) -> None:
    suffix = ".json" if source == "json" else ".png"
    samples = attach_masks(samples_of(dataset), str(dataset / source), suffix)
    masks = MaskLoader(CLASSES, colors=COLOURS if source == "colour" else None)
    loader = ImageLoader(target_size=[40, 40], keep_aspect_ratio=True, rescale="none")
    pipe = InputPipeline(samples, loader, mask_loader=masks, augmenter=augmenter(aug),
                         sampler=Sampler(seed=1), batch_size=12, seed=3,
                         output_structure=("image", "mask"))  # fmt: skip
    images, labels = next(pipe.numpy_iterator())
    assert images.shape == (12, 40, 40, 3) and labels.shape == (12, 40, 40, 1)
    assert set(np.unique(labels)) <= {0, 1, 2} and {1, 2} <= set(np.unique(labels))
    bright = images.mean(axis=-1) > 125
    agreement = (bright == (labels[..., 0] > 0)).mean()
    assert agreement > 0.97, agreement
    again_images, again_labels = next(pipe.numpy_iterator())
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)


def test_rectangle_and_polygon_rasterize_to_their_classes() -> None:
    document = {"annotations": [
        {"label": "box", "type": "rectangle", "points": [[1, 1], [3, 2]]},
        {"label": "wedge", "type": "polygon", "points": [[5, 0], [7, 0], [7, 2]]},
    ]}  # fmt: skip
    mask = MaskLoader(CLASSES).rasterize(document, 4, 8)[..., 0]
    assert mask[1:3, 1:4].tolist() == [[1, 1, 1], [1, 1, 1]]
    assert mask[0, 5:8].tolist() == [2, 2, 2] and mask[3].tolist() == [0] * 8


def test_segmentation_errors_are_clear(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="label 'crack' is not one of the segmentation classes"):
        MaskLoader(CLASSES).rasterize({"annotations": [{"label": "crack", "points": []}]}, 2, 2)
    with pytest.raises(DataError, match="use a polygon .3\\+ points. or a rectangle"):
        MaskLoader(CLASSES).rasterize(
            {"annotations": [{"label": "box", "type": "polygon", "points": [[0, 0]]}]}, 2, 2
        )
    with pytest.raises(DataError, match="12 mask.s. not found"):
        attach_masks(samples_of(dataset), str(tmp_path), ".png")
    with pytest.raises(ConfigError, match="at least background and one class"):
        MaskLoader(["background"])
    with pytest.raises(ConfigError, match="needs a 'mask_path' column"):
        InputPipeline(samples_of(dataset), ImageLoader(), mask_loader=MaskLoader(CLASSES))
