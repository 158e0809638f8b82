"""The input pipeline: seeded determinism with parallel maps, samplers, structure, encoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brevpipe.api import instantiate
from brevpipe.config.compose import CONF_DIR
from brevpipe.data.augment import AlbumentationsAugmenter, TfAugmenter
from brevpipe.data.encoder import MultiHotEncoder, OneHotEncoder
from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline, batch_sizes
from brevpipe.data.sampler import WEIGHTINGS, Sampler
from brevpipe.data.samples import find_samples
from brevpipe.data.shapes import ShapesDataset
from brevpipe.errors import ConfigError, DataError
from brevpipe.io import storage
from tests.conftest import preset

AUGMENTERS = sorted(p.stem for p in (CONF_DIR / "augmenter").glob("*.yaml"))


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    cache = tmp_path_factory.mktemp("cache")
    folder = ShapesDataset(samples_per_class=12, image_size=32, cache_dir=str(cache)).generate()
    return find_samples(str(folder))


def augmenter(name: str):
    return instantiate(preset("augmenter", name))


def pipeline(samples: pd.DataFrame, aug=None, seed: int = 1, **kwargs) -> InputPipeline:
    encoder = OneHotEncoder().fit(samples["category"])
    return InputPipeline(
        samples, ImageLoader(target_size=[32, 32]), encoder=encoder, augmenter=aug,
        sampler=kwargs.pop("sampler", Sampler(shuffle=True, seed=seed)), batch_size=8,
        seed=seed, **kwargs,
    )  # fmt: skip


def epoch_bytes(pipe: InputPipeline, epochs: int = 2) -> list[bytes]:
    return [images.tobytes() + labels.tobytes()
            for images, labels in pipe.get_dataset(epochs=epochs).as_numpy_iterator()]  # fmt: skip


@pytest.mark.parametrize("name", AUGMENTERS)
def test_augmenter_contract(name: str, samples: pd.DataFrame) -> None:
    """Every augmenter preset: builds from its YAML, keeps shapes, is seeded per sample."""
    first = epoch_bytes(pipeline(samples, augmenter(name)))
    assert first == epoch_bytes(pipeline(samples, augmenter(name))), "same seed, same bytes"
    assert first != epoch_bytes(pipeline(samples, augmenter(name), seed=2))
    images, labels = next(pipeline(samples, augmenter(name)).numpy_iterator())
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.shape == (8, 3)


@pytest.mark.parametrize("name", ["tf_strong", "albumentations_strong"])
def test_parallel_map_equals_serial_and_epochs_differ(name: str, samples: pd.DataFrame) -> None:
    """Parallel maps give the bytes of a one-by-one run; epochs are reshuffled. No autotuning
    model runs beside the pipeline (deleting an iterator waited for its thread, seconds)."""
    import tensorflow as tf

    pipe = pipeline(samples, augmenter(name), output_structure="image")
    assert pipe.get_dataset(epochs=None).options().autotune.enabled is False
    parallel = [b.tobytes() for b in pipe.get_dataset(epochs=2).as_numpy_iterator()]
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    serial_ds = pipe.get_dataset(epochs=2).with_options(options)
    assert parallel == [b.tobytes() for b in serial_ds.as_numpy_iterator()]
    per_epoch = len(pipe)
    assert parallel[:per_epoch] != parallel[per_epoch:]
    order0, order1 = pipe.get_samples(0)["path"], pipe.get_samples(1)["path"]
    assert sorted(order0) == sorted(order1) and list(order0) != list(order1)


def test_albumentations_transforms_get_independent_seeds(samples: pd.DataFrame) -> None:
    """Two identical p=0.5 flips must not always fire together (correlated draws would)."""
    aug = AlbumentationsAugmenter([{"name": "HorizontalFlip", "p": 0.5},
                                   {"name": "HorizontalFlip", "p": 0.5}])  # fmt: skip
    plain = pipeline(samples, None, output_structure="image")
    flipped = pipeline(samples, aug, output_structure="image")
    original = np.concatenate(list(plain.numpy_iterator()))
    augmented = np.concatenate(list(flipped.numpy_iterator()))
    changed = [not np.array_equal(a, b) for a, b in zip(original, augmented, strict=True)]
    assert any(changed), "with independent draws, some samples are flipped exactly once"


def test_unknown_albumentations_transform_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown albumentations transform 'Flipz'"):
        AlbumentationsAugmenter([{"name": "Flipz"}])
    for attribute in ("save", "Compose", "core"):  # module attributes, not transforms
        with pytest.raises(ConfigError, match=f"unknown albumentations transform '{attribute}'"):
            AlbumentationsAugmenter([{"name": attribute, "filepath_or_buffer": "/tmp/x"}])
    with pytest.raises(ConfigError, match="HorizontalFlip"):
        AlbumentationsAugmenter([{"name": "HorizontalFlip", "probability": 2}])


def test_tf_augmenter_moves_masks_with_images() -> None:
    import tensorflow as tf

    image = np.zeros((32, 32, 3), np.float32)
    image[4:12, 20:28] = 255.0
    mask = (image[..., :1] > 0).astype(np.int32)
    aug = TfAugmenter(flip_horizontal=True, flip_vertical=True, rotate=30, scale=0.1,
                      translate=0.1, fill_mode="constant")  # fmt: skip
    for seed in range(5):
        out, out_mask = aug(tf.constant(image), tf.constant([seed, 1], tf.int64), tf.constant(mask))
        bright = out.numpy()[..., 0] > 200
        assert set(np.unique(out_mask.numpy())) <= {0, 1}
        agreement = (bright == (out_mask.numpy()[..., 0] == 1)).mean()
        assert agreement > 0.97


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_group_weighting_hits_its_target(weighting: str) -> None:
    sizes = {"a": 400, "b": 100, "c": 25, "d": 5}
    table = pd.DataFrame({"group": [g for g, n in sizes.items() for _ in range(n)]})
    sampler = Sampler(groupby=["group"], weighting=weighting, max_epoch_samples=4000, seed=3)
    counts = np.array(list(sizes.values()), dtype=float)
    target = WEIGHTINGS[weighting](counts) / WEIGHTINGS[weighting](counts).sum()
    drawn = table["group"].iloc[np.concatenate([sampler.epoch_indices(table, e) for e in range(3)])]
    observed = drawn.value_counts(normalize=True).reindex(list(sizes), fill_value=0.0).to_numpy()
    assert np.abs(observed - target).max() < 0.05, (weighting, observed, target)


def test_sampler_caps_epochs_reshuffles_and_counts_batches() -> None:
    table = pd.DataFrame({"path": [f"p{i}" for i in range(100)]})
    sampler = Sampler(max_epoch_samples=30, seed=1)
    first, second = sampler.epoch_indices(table, 0), sampler.epoch_indices(table, 1)
    assert len(first) == len(second) == 30 and len(set(first)) == 30
    assert list(first) != list(second)
    assert list(first) == list(Sampler(max_epoch_samples=30, seed=1).epoch_indices(table, 0))
    assert sampler.batches(table, 8) == 4
    assert list(Sampler(shuffle=False).epoch_indices(table, 5)) == list(range(100))
    twice = Sampler(repeat=2, seed=1).epoch_indices(table, 0)
    assert len(twice) == 200 and sorted(twice) == sorted([*range(100), *range(100)])
    assert list(twice[:100]) != list(twice[100:])
    with pytest.raises(ConfigError, match="weighting='square'"):
        Sampler(weighting="square")


def test_batches_split_between_replicas_give_every_replica_a_sample() -> None:
    """Multi-worker training splits each batch between the replicas; an empty share crashed
    worker 1 on CPUs where TensorFlow runs oneDNN (its Conv2D gives an empty batch the input's
    shape). Every batch has a sample per replica: the same samples, as many batches."""
    for count in range(1, 60):
        for size in range(1, 12):
            single = batch_sizes(count, size)
            assert sum(single) == count and set(single[:-1]) <= {size}
            for replicas in (2, 3, 4):
                try:
                    shared = batch_sizes(count, size, replicas)
                except DataError as exc:
                    assert "workers cannot share" in str(exc)
                    assert single[-1] < replicas and (count < replicas or size < 2 * replicas - 1)
                    continue
                assert sum(shared) == count and len(shared) == len(single)
                assert min(shared) >= replicas and max(shared) <= size
                assert shared[:-2] == single[:-2], "only the last two batches change"
                if single[-1] >= replicas:
                    assert shared == single
    assert batch_sizes(9, 8, 2) == [5, 4]  # the devel split of the two-worker test
    with pytest.raises(DataError, match="use trainer.batch_size>=3"):
        batch_sizes(5, 2, 2)


@pytest.mark.parametrize("name", [None, "albumentations_light"])  # per image, per batch
def test_a_dataset_for_replicas_yields_the_same_rows_in_shared_batches(
    samples: pd.DataFrame, name: str | None
) -> None:
    aug = augmenter(name) if name else None
    nine = pipeline(samples.iloc[:9], aug, output_structure=("image", "index"))
    shared = list(nine.get_dataset(epochs=2, replicas=2).as_numpy_iterator())
    single = list(nine.get_dataset(epochs=2).as_numpy_iterator())
    assert [len(rows) for _, rows in shared] == [5, 4, 5, 4]
    assert [len(rows) for _, rows in single] == [8, 1, 8, 1]
    assert np.concatenate([r for _, r in shared]).tolist() == \
        np.concatenate([r for _, r in single]).tolist()  # fmt: skip
    assert np.concatenate([i for i, _ in shared]).tobytes() == \
        np.concatenate([i for i, _ in single]).tobytes()  # fmt: skip


def test_output_structure_map_chaining_and_get_samples(samples: pd.DataFrame) -> None:
    pipe = pipeline(samples, output_structure=("path", "index", "flag")).map(
        lambda features: {**features, "flag": features["index"] * 0 + 7}
    )
    paths, index, flag = next(pipe.numpy_iterator(epoch=3))
    expected = pipe.get_samples(3)["path"].tolist()[:8]
    assert [p.decode() for p in paths] == expected
    assert (flag == 7).all() and len(pipe) == 5
    assert pipe.samples["path"].iloc[index].tolist() == expected
    with pytest.raises(ConfigError, match="output_structure asks for \\['nope'\\]"):
        next(pipeline(samples, output_structure=("image", "nope")).numpy_iterator())


def test_a_users_map_component_keeps_autograph_brevpipes_own_code_skips_it(
    samples: pd.DataFrame,
) -> None:
    """brevpipe's element code needs no AutoGraph (it saves ~2 s at a job's start); a user's
    ``.map`` component with Python control flow on tensors still works, converted."""
    import tensorflow as tf

    def brighten_dark_images(features: dict) -> dict:
        image = features["image"]
        if tf.reduce_mean(image) < 2.0:  # Python `if` on a tensor: AutoGraph makes it tf.cond
            image = image * 0 + 1
        return {**features, "image": image}

    own = pipeline(samples)
    assert own._graph_function() is tf.autograph.experimental.do_not_convert
    users = own.map(brighten_dark_images)
    assert users._graph_function() is not tf.autograph.experimental.do_not_convert
    images, _ = next(users.numpy_iterator())
    assert (images == 1).all()
    assert not (next(own.numpy_iterator())[0] == 1).all()


def test_remote_images_load_like_local_ones(samples: pd.DataFrame, s3_bucket: str) -> None:
    folder = Path(samples["path"].iloc[0]).parents[1]
    storage.upload(folder, f"{s3_bucket}/shapes")
    remote = find_samples(f"{s3_bucket}/shapes")
    local = pipeline(samples, augmenter("tf_light"))
    over_s3 = pipeline(remote, augmenter("tf_light"))
    assert epoch_bytes(local, epochs=1) == epoch_bytes(over_s3, epochs=1)


def test_multi_hot_rows_of_different_label_counts_batch(samples: pd.DataFrame) -> None:
    folder = Path(samples["path"].iloc[0]).parents[1]
    multi = find_samples(str(folder), class_mapping={"square": ["square", "angular"],
                                                     "triangle": ["angular"]})  # fmt: skip
    encoder = MultiHotEncoder().fit(multi["category"])
    assert encoder.classes == ["angular", "circle", "square"]
    pipe = InputPipeline(multi, ImageLoader(target_size=[32, 32]), encoder=encoder, batch_size=36)
    _, labels = next(pipe.numpy_iterator())
    assert sorted({tuple(r) for r in labels.tolist()}) == [(0, 1, 0), (1, 0, 0), (1, 0, 1)]


def test_unknown_classes_raise_or_encode_as_zero() -> None:
    with pytest.raises(DataError, match="class 'cat' is not one of .*encoder.on_unknown=zero"):
        OneHotEncoder(classes=["dog"]).transform([("cat",)])
    rows = OneHotEncoder(classes=["dog"], on_unknown="zero").transform([("cat",), ("dog",)])
    assert rows.tolist() == [[0.0], [1.0]]
    assert MultiHotEncoder(classes=["a", "b"], on_unknown="zero").transform(
        [("a", "x"), ()]
    ).tolist() == [[1.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("where", ["memory", "folder"])
def test_decoded_image_cache_gives_the_same_bytes(
    where: str, samples: pd.DataFrame, tmp_path: Path
) -> None:
    cache = "memory" if where == "memory" else str(tmp_path / "decoded")
    plain = epoch_bytes(pipeline(samples, augmenter("tf_strong")))
    cached = pipeline(samples, augmenter("tf_strong"), cache=cache)
    assert epoch_bytes(cached) == plain
    if where == "folder":
        (file,) = (tmp_path / "decoded").glob("decoded-*.npy")
        stamp = file.stat().st_mtime_ns
        again = pipeline(samples, augmenter("tf_strong"), cache=cache)
        assert epoch_bytes(again) == plain and file.stat().st_mtime_ns == stamp
        other = pipeline(samples.iloc[:10], cache=cache)
        other.decoded_images()
        assert len(list((tmp_path / "decoded").glob("decoded-*.npy"))) == 2, "keyed by data"


# -- reduced-size JPEG decode ----------------------------------------------------------------
JPEG_SIZES = {  # (height, width): (ratio for target 64x64, ratio keeping the aspect ratio)
    (256, 256): (4, 4),
    (300, 200): (2, 4),
    (90, 1000): (1, 8),
    (64, 64): (1, 1),
    (129, 130): (2, 2),
}


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """JPEGs of the sizes above and one PNG, smooth content with some noise."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate(JPEG_SIZES):
        y, x = np.mgrid[0:height, 0:width]
        image = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        (folder / "a").mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / "a" / f"{i}.jpg", quality=90)
        if i == 0:
            Image.fromarray(image).save(folder / "a" / "png.png")
    return find_samples(str(folder))


@pytest.mark.parametrize("keep_aspect_ratio", [False, True])
def test_reduced_jpeg_decode_takes_the_largest_ratio_and_is_deterministic(
    mixed_images: pd.DataFrame, keep_aspect_ratio: bool
) -> None:
    """Each JPEG decodes at the largest DCT ratio keeping it at least the resized size, the
    rest is the same antialiased resize; PNGs are untouched; a parallel map gives the bytes
    of a serial one."""
    import tensorflow as tf

    loader = ImageLoader(target_size=[64, 64], keep_aspect_ratio=keep_aspect_ratio)
    full = ImageLoader(target_size=[64, 64], keep_aspect_ratio=keep_aspect_ratio,
                       reduced_jpeg_decode=False)  # fmt: skip
    for path in mixed_images["path"]:
        data = tf.constant(Path(path).read_bytes())
        if path.endswith(".png"):
            assert np.array_equal(loader.decode(data), full.decode(data))
            continue
        size = tuple(int(v) for v in tf.io.extract_jpeg_shape(data)[:2])
        ratio = JPEG_SIZES[size][keep_aspect_ratio]
        assert int(loader.jpeg_ratio(tf.constant(size))) == ratio, (size, keep_aspect_ratio)
        if not keep_aspect_ratio:  # the same as decode_jpeg(ratio) + tf.image.resize by hand
            by_hand = tf.image.resize(tf.io.decode_jpeg(data, channels=3, ratio=ratio),
                                      (64, 64), antialias=True)  # fmt: skip
            assert np.array_equal(loader.decode(data), by_hand), size
        close = np.abs(loader.decode(data).numpy() - full.decode(data).numpy()).mean()
        assert close < 6.0, (size, close)  # the same picture, low-pass filtered differently
    pipe = InputPipeline(mixed_images, loader, batch_size=4, output_structure="image")
    parallel = [b.tobytes() for b in pipe.numpy_iterator()]
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    serial = pipe.get_dataset().with_options(options).as_numpy_iterator()
    assert parallel == [b.tobytes() for b in serial]
    recipe = loader.recipe()["decode"]["jpeg"]
    assert recipe["ratios"] == [8, 4, 2] and full.recipe()["decode"]["jpeg"]["ratios"] == []


def test_records_from_before_reduced_decode_keep_full_size_decoding() -> None:
    """A model.json or output.json written before the setting existed decodes as it was
    trained; a new record says which path it took."""
    old = ImageLoader.from_record({"target_size": [64, 64], "antialias": True})
    assert old.reduced_jpeg_decode is False
    assert ImageLoader().metadata()["reduced_jpeg_decode"] is True
    assert ImageLoader.from_record(ImageLoader().metadata()).reduced_jpeg_decode is True
    assert not ImageLoader(roi=[0, 0, 10, 10]).reduces_jpeg  # a crop is in source pixels


@pytest.mark.parametrize(("side", "antialias"), [(128, True), (150, True), (128, False)])
def test_jpegs_of_one_ratio_decode_without_branches_to_the_same_bytes(
    tmp_path: Path, side: int, antialias: bool
) -> None:
    """A folder of JPEGs that all take one ratio gets the ratio fixed in the graph (and no
    resize where they decode at the target size): the batches are those of the per-image
    decode; a folder with other files, or other ratios, keeps the per-image decode."""
    import tensorflow as tf
    from PIL import Image

    from brevpipe.data.decode import jpeg_size

    rng = np.random.default_rng(side)
    for i in range(12):  # 128 -> 64 at ratio 2; 150 (158 wide) -> 75 (79), resized to 64
        width = side if side == 128 else side + 8 * (i % 2)
        pixels = (rng.random((side, width, 3)) * 255).astype(np.uint8)
        (tmp_path / "data" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "data" / f"c{i % 3}" / f"{i}.jpg", quality=90,
                                     progressive=bool(i % 4 == 1))  # fmt: skip
    samples = find_samples(str(tmp_path / "data"))
    paths = samples["path"].tolist()
    for path in paths:
        header = tf.io.extract_jpeg_shape(tf.io.read_file(path))[:2].numpy()
        assert jpeg_size(path) == tuple(int(v) for v in header)
    loader = ImageLoader(target_size=[64, 64], antialias=antialias)
    plan = loader._jpeg_plan(paths)
    assert plan == (2, side == 128 and antialias)
    decode_known = loader.decoder_for(paths)
    assert decode_known != loader.decode_sized
    for path in paths:
        data = tf.io.read_file(path)
        assert np.array_equal(decode_known(data)[0], loader.decode_sized(data)[0]), path
        assert np.array_equal(decode_known(data)[1], loader.decode_sized(data)[1]), path
    pipe = InputPipeline(samples, loader, batch_size=4, output_structure="image")
    per_image = [loader.load(tf.constant(p)).numpy() for p in pipe.get_samples()["path"]]
    assert np.array_equal(np.concatenate(list(pipe.numpy_iterator())), np.stack(per_image))

    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(other / "x.png")
    Image.fromarray(np.zeros((4 * side, 4 * side, 3), np.uint8)).save(other / "big.jpg")
    assert loader._jpeg_plan([*paths, str(other / "x.png")]) is None  # not all JPEGs
    assert loader._jpeg_plan([*paths, str(other / "big.jpg")]) is None  # ratio 8 for this one
    assert loader.decoder_for([*paths, str(other / "x.png")]) == loader.decode_sized
    assert ImageLoader(target_size=[64, 64], keep_aspect_ratio=True)._jpeg_plan(paths) is None
