"""``brevpipe predict``: models named by archive (local, S3), job id or MLflow URI; images by
folder, glob or file; CSV and JSON equal to ``Predictor.predict_urls``; clear errors."""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brevpipe.commands import predict
from brevpipe.errors import ConfigError, DataError
from brevpipe.io import storage
from brevpipe.serving.batch import expand_images
from brevpipe.serving.resolve import model_archive_url
from tests.conftest import compose_config, tiny_overrides

JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"
# in one test process with test_serve.py, which serves the same tiny job (trained once)
pytestmark = pytest.mark.xdist_group("tiny-job")


@dataclass(frozen=True)
class TinyJob:
    """A trained tiny job (MLflow on) and some of its images."""

    root: str
    job_id: str
    bucket: str
    archive: str
    tracking_uri: str
    run_id: str
    images: tuple[str, ...]  # PNG and JPEG files of its dataset, all classes


@functools.cache
def tiny_job(base: Path) -> TinyJob:
    """Trained once per test session (test_serve.py reuses it)."""
    from brevpipe.engine.runner import run_job

    folder = base / "tiny-job"
    job = run_job(compose_config(tiny_overrides(folder)))
    output = storage.read_json(job.output_url)
    samples = pd.read_csv(job.bucket.artifact("samples.csv"))
    images = tuple(sorted(samples.groupby(samples["path"].str.rsplit("/", n=2).str[1])
                          .head(4)["path"]))  # fmt: skip
    return TinyJob(root=job.root, job_id=job.id, bucket=job.bucket_url,
                   archive=output["model"]["archive_url"],
                   tracking_uri=output["mlflow"]["tracking_uri"],
                   run_id=output["mlflow"]["run_id"], images=images)  # fmt: skip


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> TinyJob:
    return tiny_job(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def predictor(job: TinyJob):
    from brevpipe.serving.predictor import load_predictor

    return load_predictor(job.archive)


@pytest.fixture
def image_folder(job: TinyJob, tmp_path: Path) -> Path:
    """The job's images copied into ``tmp_path/images/<class>/``, plus a text file."""
    folder = tmp_path / "images"
    for path in job.images:
        target = folder / Path(path).parent.name / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (folder / "notes.txt").write_text("not an image")
    return folder


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = predict.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def score_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("score_")]


def assert_same_scores(table: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert table["path"].tolist() == expected["path"].tolist()
    assert table["predicted"].tolist() == expected["predicted"].tolist()
    assert score_columns(table) == score_columns(expected)
    np.testing.assert_allclose(table[score_columns(table)].to_numpy(float),
                               expected[score_columns(expected)].to_numpy(float),
                               rtol=0, atol=1e-6)  # fmt: skip


# -- no model needed -----------------------------------------------------------------------
def test_help_does_not_import_tensorflow() -> None:
    code = ("import sys; from brevpipe.commands import cli\n"
            "try:\n    cli.main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules and 'mlflow' not in sys.modules")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--on-error" in result.stdout and "--job-root" in result.stdout


def test_a_pattern_that_matches_nothing_is_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    code, out, err = run_cli(["model.tar.gz", str(tmp_path / "*.png"),
                              str(tmp_path / "nope" / "*.jpg")], capsys)  # fmt: skip
    assert code == 1 and out == ""
    assert f"no images match '{tmp_path / 'nope' / '*.jpg'}'" in err
    with pytest.raises(DataError, match="no images match 'memory://empty'"):
        expand_images(["memory://empty"])


def test_images_from_folders_globs_and_files(tmp_path: Path) -> None:
    for name in ("a/1.png", "a/b/2.JPG", "a/b/3.tiff", "a/skip.txt", "c.bmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    patterns = ["a", "*.bmp", "a/1.png", "a/skip.txt"]  # a folder, a glob, files
    urls = expand_images([str(tmp_path / p) for p in patterns])
    assert urls == [str(tmp_path / p) for p in ("a/1.png", "a/b/2.JPG", "a/b/3.tiff", "c.bmp",
                                                "a/skip.txt")]  # fmt: skip


def test_unknown_models_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"no job 'deadbeef' under {tmp_path}"):
        model_archive_url("deadbeef", job_root=str(tmp_path))
    (tmp_path / "1234-a").mkdir()
    (tmp_path / "1234-b").mkdir()
    with pytest.raises(ConfigError, match="job id '1234' is ambiguous.*1234-a, 1234-b"):
        model_archive_url("1234", job_root=str(tmp_path))
    with pytest.raises(ConfigError, match=r"job 1234-a \(status unknown\) has no exported model"):
        model_archive_url("1234-a", job_root=str(tmp_path))
    with pytest.raises(ConfigError, match="holds no exported model"):
        model_archive_url(str(tmp_path / "1234-b"))
    with pytest.raises(ConfigError, match="use models:/<name>/<version>"):
        model_archive_url("models:/tiny", tracking_uri=f"sqlite:///{tmp_path}/m.db")


# -- with a trained model ------------------------------------------------------------------
@pytest.mark.slow
def test_folder_to_csv_equals_predict_urls(job, predictor, image_folder, capsys) -> None:
    code, out, err = run_cli([job.archive, str(image_folder), "--batch-size", "5"], capsys)
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns) == ["path", "predicted",
                                   *(f"score_{c}" for c in predictor.classes)]  # fmt: skip
    urls = sorted(str(p) for p in image_folder.rglob("*.*") if p.suffix != ".txt")
    assert len(table) == len(job.images) == len(urls)
    assert_same_scores(table, predictor.predict_urls(urls))


@pytest.mark.slow
def test_job_id_and_glob_to_json_file(job, predictor, image_folder, tmp_path, capsys) -> None:
    out_file = tmp_path / "out" / "predictions.json"
    argv = [job.job_id[:8], str(image_folder / "*" / "*.png"), "--job-root", job.root,  # prefix
            "--output", str(out_file)]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert out == ""
    records = json.loads(out_file.read_text())  # JSON because of the .json suffix
    assert isinstance(records, list) and set(records[0]) == {
        "path", "predicted", *(f"score_{c}" for c in predictor.classes)}
    urls = sorted(str(p) for p in image_folder.glob("*/*.png"))
    assert [r["path"] for r in records] == urls
    assert_same_scores(pd.DataFrame(records), predictor.predict_urls(urls))


@pytest.mark.slow
def test_archive_and_images_on_s3(job, predictor, image_folder, s3_bucket, capsys) -> None:
    archive = f"{s3_bucket}/models/saved_model.tar.gz"
    storage.upload(job.archive, archive)
    storage.upload(image_folder, f"{s3_bucket}/images")
    local_png = str(image_folder / "circle" / "*.png")  # local and S3 files in one call
    code, out, err = run_cli([archive, f"{s3_bucket}/images/**/*.jpg", local_png,
                              "--format", "json", "--batch-size", "4"], capsys)  # fmt: skip
    assert code == 0, err
    records = json.loads(out)
    urls = [r["path"] for r in records]
    remote = [u for u in urls if u.startswith(f"{s3_bucket}/images/") and u.endswith(".jpg")]
    assert remote and urls == remote + sorted(str(p) for p in image_folder.glob("circle/*.png"))
    local = [str(image_folder / u.removeprefix(f"{s3_bucket}/images/")) for u in urls]
    expected = predictor.predict_urls(local).assign(path=urls)
    assert_same_scores(pd.DataFrame(records), expected)


@pytest.mark.slow
def test_corrupt_jpeg_is_named_or_skipped(job, predictor, image_folder, capsys) -> None:
    bad = image_folder / "circle" / "broken.jpg"
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(JPEG_HEAD + b"\x00" * 40)
    code, out, err = run_cli([job.archive, str(image_folder)], capsys)
    assert code == 1 and out == ""
    assert f"1 image(s) cannot be decoded: {bad}" in err and "--on-error skip" in err

    code, out, err = run_cli([job.archive, str(image_folder), "--on-error", "skip"], capsys)
    assert code == 0
    assert f"warning: skipped {bad}" in err
    table = pd.read_csv(io.StringIO(out))
    assert str(bad) not in table["path"].tolist() and len(table) == len(job.images)


@pytest.mark.slow
def test_mlflow_uris_lead_to_the_jobs_archive(job, predictor, tmp_path, capsys) -> None:
    from mlflow import MlflowClient

    uri = f"runs:/{job.run_id}/mlflow_model"
    assert model_archive_url(uri, tracking_uri=job.tracking_uri) == job.archive
    # a registered version of the run's model (a client of its own: mlflow.set_registry_uri
    # would leave MLFLOW_REGISTRY_URI set for every later test and subprocess)
    client = MlflowClient(tracking_uri=job.tracking_uri, registry_uri=job.tracking_uri)
    client.create_registered_model("tiny-shapes")
    run = client.get_run(job.run_id)
    version = client.create_model_version("tiny-shapes", f"{run.info.artifact_uri}/mlflow_model",
                                          run_id=job.run_id)  # fmt: skip
    for name in (f"models:/tiny-shapes/{version.version}", "models:/tiny-shapes/latest"):
        assert model_archive_url(name, tracking_uri=job.tracking_uri) == job.archive

    # bucket gone: the copy of the archive in the run's artifacts (a copy of the store whose
    # run tag points to a bucket that does not exist; artifacts stay where they were)
    store = tmp_path / "mlflow.db"
    shutil.copy(job.tracking_uri.removeprefix("sqlite:///"), store)
    MlflowClient(f"sqlite:///{store}").set_tag(job.run_id, "brevpipe.bucket", str(tmp_path / "x"))
    code, out, err = run_cli([uri, *job.images, "--tracking-uri", f"sqlite:///{store}"], capsys)
    assert code == 0, err
    assert_same_scores(pd.read_csv(io.StringIO(out)), predictor.predict_urls(list(job.images)))

    with pytest.raises(ConfigError, match="MLflow run 0123abc not found"):
        model_archive_url("runs:/0123abc/mlflow_model", tracking_uri=job.tracking_uri)


@pytest.mark.slow
def test_scores_equal_the_jobs_own_evaluation(job, capsys) -> None:
    """The evaluate stage scored the devel images with the trained model in the training
    process; brevpipe predict on the exported archive gives the same scores (no drift)."""
    evaluated = pd.read_csv(storage.join(job.bucket, "artifacts", "predictions.csv"))
    paths = evaluated["path"].tolist()
    code, out, err = run_cli([job.archive, *paths], capsys)
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out))
    assert table["path"].tolist() == paths
    assert table["predicted"].tolist() == evaluated["predicted"].tolist()
    scores = [c for c in evaluated.columns if c.startswith("score_")]
    assert np.abs(table[scores].to_numpy() - evaluated[scores].to_numpy()).max() <= 1e-6


def repacked(archive: str, folder: Path, edit_json=None, extra=None) -> str:
    """A copy of ``archive`` with model.json edited and/or extra tar members added."""
    import io
    import json
    import tarfile

    unpacked = folder / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    if edit_json:
        meta = json.loads((unpacked / "model.json").read_text())
        edit_json(meta)
        (unpacked / "model.json").write_text(json.dumps(meta))
    out = folder / "saved_model.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(unpacked.rglob("*")):
            tar.add(path, arcname=path.relative_to(unpacked).as_posix(), recursive=False)
        for member in extra or []:
            tar.addfile(member, io.BytesIO(b"x") if member.isfile() else None)
    return str(out)


@pytest.mark.slow
def test_tampered_archives_and_model_json_get_one_line(job, tmp_path: Path, capsys) -> None:
    import tarfile

    traversal = tarfile.TarInfo("../escaped.txt")
    traversal.size = 1
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    cases = [
        ("traversal", None, [traversal], "refusing archive member '../escaped.txt'"),
        ("symlink", None, [link], "refusing archive member 'link'"),
        ("huge input", lambda m: m["preprocessing"].update(target_size=[50000, 50000]), None,
         "model.json 'preprocessing.target_size' must be"),
        ("shape mismatch", lambda m: m["preprocessing"].update(target_size=[65, 64]), None,
         "model.json 'input_shape' [32, 32, 3] does not match preprocessing [65, 64, 3]"),
        ("signature mismatch", lambda m: (m["preprocessing"].update(target_size=[65, 64]),
                                          m.update(input_shape=[65, 64, 3])), None,
         "gives images of shape [65, 64, 3] (target_size, color_mode) but the model takes"),
        ("channels", lambda m: (m["preprocessing"].update(color_mode="greyscale"),
                                m.pop("input_shape")), None, "but the model takes [32, 32, 3]"),
        ("classes", lambda m: m.update(classes=["a", "b"]), None,
         "model.json lists 2 classes but the model scores 3"),
        ("unknown key", lambda m: m["preprocessing"].update(evil={"_target_": "os.system"}),
         None, "model.json 'preprocessing' has unknown keys ['evil']"),
    ]  # fmt: skip
    for name, edit, extra, message in cases:
        folder = tmp_path / name.replace(" ", "_")
        archive = repacked(job.archive, folder, edit, extra)
        code, out, err = run_cli([archive, job.images[0]], capsys)
        assert code == 1, (name, err)
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, (
            name, err)
        assert not (tmp_path / "escaped.txt").exists()


def test_output_destination_is_checked_before_scoring(s3_server, tmp_path: Path, monkeypatch,
                                                      capsys) -> None:  # fmt: skip
    """No credentials for an s3:// --output: one line before any model is loaded (the model
    given here does not even exist)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    storage.configure({"s3": {"skip_instance_cache": True}})
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    code, out, err = run_cli([str(tmp_path / "no-model.tar.gz"), str(image), "--output",
                              "s3://results/x.csv"], capsys)  # fmt: skip
    assert code == 1 and "cannot write --output s3://results/x.csv" in err, err
    assert "Traceback" not in err and "no-model" not in err and len(err.splitlines()) == 1
    (tmp_path / "folder.csv").mkdir()
    code, _, err = run_cli([str(tmp_path / "no-model.tar.gz"), str(image), "--output",
                            str(tmp_path / "folder.csv")], capsys)  # fmt: skip
    assert code == 1 and "is a folder" in err


@pytest.mark.slow
def test_predict_says_where_it_wrote(job, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([job.archive, job.images[0], "--output", "../out/x.csv"], capsys)
    target = (tmp_path / ".." / "out" / "x.csv").resolve()
    assert code == 0 and f"wrote 1 results to {target}" in err and target.exists()


def test_results_whose_output_cannot_be_written_are_kept_in_a_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--output under a path that is a file: the write fails, the scores are not lost."""
    from brevpipe.serving.batch import write_output

    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    data = b"path,score\na.png,0.9\n"
    with pytest.raises(ConfigError, match=r"cannot write .*the 1 results are in ") as failure:
        write_output(str(blocker / "out.csv"), data, "csv", 1)
    kept = Path(str(failure.value).rsplit(" are in ", 1)[1].rstrip("."))
    assert kept.parent == tmp_path and kept.read_bytes() == data
