"""No storage call may hang a job: remote reads stay out of tf.data's threads, and every remote
call ends within ``storage.timeout_s`` with an error naming the URL (issue: jobs on S3 data hung
after training, fsspec's IO thread waiting for a pooled connection)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.samples import find_samples
from brevpipe.data.shapes import ShapesDataset
from brevpipe.errors import StorageError
from brevpipe.io import storage


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An HTTP endpoint on 127.0.0.1 that accepts connections and reads requests but never
    answers: a stuck S3 request."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    done.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def stuck_s3(endpoint: str, monkeypatch: pytest.MonkeyPatch, timeout_s: float) -> None:
    """s3fs pointed at ``endpoint`` with its own timeouts far away and one pooled connection:
    only brevpipe's limit can end a stuck call."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    options = {"s3": {"client_kwargs": {"endpoint_url": endpoint},
                      "config_kwargs": {"read_timeout": 600, "connect_timeout": 600,
                                        "max_pool_connections": 1,
                                        "retries": {"max_attempts": 1}},
                      "skip_instance_cache": True}}  # fmt: skip
    storage.configure(options, timeout_s=timeout_s)


@pytest.mark.timeout(60)
def test_a_request_without_an_answer_fails_naming_the_url(
    black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck_s3(black_hole, monkeypatch, timeout_s=2)
    started = time.perf_counter()
    with pytest.raises(StorageError, match=r"s3://bucket/a\.png: no answer within 2 s.*timeout_s"):
        storage.read_bytes("s3://bucket/a.png")
    with pytest.raises(StorageError, match=r"s3://bucket/out\.json: no answer within 2 s"):
        storage.write_json("s3://bucket/out.json", {"a": 1})
    assert time.perf_counter() - started < 20


@pytest.mark.timeout(60)
def test_a_call_waiting_for_a_pooled_connection_fails_instead_of_hanging(
    black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hang's shape: one request holds the pool's only connection; the job's next write
    waits on fsspec's event loop for a free connection. It must end, with a clear error."""
    stuck_s3(black_hole, monkeypatch, timeout_s=3)
    fs, _ = storage.get_fs("s3://bucket/x")
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            storage.call(fs, "s3://bucket/held.png", "cat_file", "bucket/held.png")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    holder = threading.Thread(target=storage.carried(hold))  # with this test's timeout
    holder.start()
    time.sleep(0.5)  # the holder's request owns the connection now
    started = time.perf_counter()
    with pytest.raises(StorageError, match="s3://bucket/next.json: no answer"):
        storage.call(fs, "s3://bucket/next.json", "pipe_file", "bucket/next.json", b"{}")
    holder.join(30)
    assert not holder.is_alive() and isinstance(errors[0], StorageError)
    assert time.perf_counter() - started < 20


@pytest.fixture(scope="module")
def local_samples(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    cache = tmp_path_factory.mktemp("cache")
    folder = ShapesDataset(samples_per_class=12, image_size=32, cache_dir=str(cache)).generate()
    return find_samples(str(folder))


def test_tf_data_threads_never_call_storage_and_later_epochs_need_no_s3(
    local_samples: pd.DataFrame, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote images are copied by the thread that builds the dataset; an endless dataset
    abandoned after a few batches leaves no read behind, and the data can even disappear."""
    folder = Path(local_samples["path"].iloc[0]).parents[1]
    storage.upload(folder, f"{s3_bucket}/shapes")
    remote = find_samples(f"{s3_bucket}/shapes")
    callers: list[str] = []
    get_fs = storage.get_fs

    def recording_get_fs(url: str):
        callers.append(threading.current_thread().name)
        return get_fs(url)

    monkeypatch.setattr(storage, "get_fs", recording_get_fs)
    loader = ImageLoader(target_size=[32, 32])
    pipe = InputPipeline(remote, loader, batch_size=8, output_structure="image")
    endless = iter(pipe.get_dataset(epochs=None))
    first = [next(endless) for _ in range(3)]
    del endless  # abandoned mid-stream, as fit(steps_per_epoch=...) and previews do
    assert callers and set(callers) == {threading.main_thread().name}

    fs, bucket = get_fs(s3_bucket)
    fs.rm(f"{bucket}/shapes", recursive=True)
    again = iter(pipe.get_dataset(epochs=None))
    assert all((next(again).numpy() == batch.numpy()).all() for batch in first)
    local = InputPipeline(local_samples, loader, batch_size=8, output_structure="image")
    assert [b.tobytes() for b in local.numpy_iterator()] == [
        b.tobytes() for b in pipe.numpy_iterator()
    ]


def test_a_remote_image_that_disappeared_is_named_as_unreadable(
    local_samples: pd.DataFrame, s3_bucket: str
) -> None:
    """loader.on_error=skip works on S3 too: a deleted object is one unreadable image."""
    folder = Path(local_samples["path"].iloc[0]).parents[1]
    storage.upload(folder, f"{s3_bucket}/gone")
    remote = find_samples(f"{s3_bucket}/gone")
    victim = remote["path"].iloc[3]
    fs, path = storage.get_fs(victim)
    fs.rm(path)
    bad = ImageLoader(target_size=[32, 32], on_error="skip").find_unreadable(
        remote["path"].tolist(), remote["etag"].tolist())
    assert [url for url, _ in bad] == [victim] and "cannot read it" in bad[0][1]
