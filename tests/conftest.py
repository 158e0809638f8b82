"""Shared fixtures: composed configs on tiny data, a real S3 (moto's server) on 127.0.0.1 and
a real ``mlflow server``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from brevpipe.config.compose import CONF_DIR
from brevpipe.io import storage

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with the most work first (a minute per slow test, a tenth of their
    longest timeout), each module's tests together in file order: the test processes then
    end together instead of one running long tests alone at the end, and module fixtures are
    made once per process."""
    work: dict[str, float] = {}
    longest: dict[str, float] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        work[module] = work.get(module, 0) + (60 if item.get_closest_marker("slow") else 1)
        timeout = item.get_closest_marker("timeout")
        if timeout and timeout.args:
            longest[module] = max(longest.get(module, 0), timeout.args[0] / 10)
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-(work[m := item.nodeid.split("::")[0]] + longest.get(m, 0)),
                                 order[id(item)]))  # fmt: skip


def tiny_overrides(tmp_path: Path, shapes: bool = True) -> list[str]:
    """A job that trains in seconds: few small images, a small net, two epochs."""
    dataset = [
        f"dataset.cache_dir={tmp_path / 'datasets'}",
        "dataset.samples_per_class=16",
        "dataset.image_size=72",  # JPEGs decode at 1/2 size, then resize to 32
    ]
    return [
        f"job.root={tmp_path / 'jobs'}",
        *(dataset if shapes else []),
        "loader.target_size=[32,32]",
        "model.filters=[8,16]",
        "model.dense=16",
        "trainer.epochs=2",
        "trainer.batch_size=8",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


def compose_config(overrides: list[str]) -> DictConfig:
    """brevpipe's config composed the way ``brevpipe run`` composes it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def preset(group: str, option: str) -> dict:
    """A group option's settings as composed (its component's defaults + the preset's values)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_config([f"{group}={option}"])[group], resolve=True)


@pytest.fixture
def tiny_config(tmp_path: Path):
    """A factory: ``tiny_config("seed=3", ...)`` -> composed config on tiny data in tmp_path."""

    def make(*extra: str) -> DictConfig:
        shapes = "dataset=folder" not in extra
        return compose_config([*tiny_overrides(tmp_path, shapes), *extra])

    return make


@pytest.fixture(autouse=True)
def _reset_storage_options() -> Iterator[None]:
    yield
    storage.configure({})


@pytest.fixture(autouse=True)
def _own_data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test's jobs (and their subprocesses) share a data cache of their own, never the
    user's; the process's active cache is reset afterwards."""
    from brevpipe.io import cache

    monkeypatch.setenv("BREVPIPE_CACHE_ROOT", str(tmp_path / "data-cache"))
    yield
    cache.configure(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port; the AWS variables point s3fs at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL_S3": endpoint})
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the moto server; returns ``s3://<bucket>``."""
    import re
    import uuid

    import s3fs

    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(name)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port`` with its sqlite store and artifacts in
    ``folder``, once it answers (the same folder and port start it again after a stop).
    Without MLflow's job execution (GenAI jobs, which brevpipe does not use): its runner and
    task consumers are three more processes importing MLflow, 18 s of CPU per server against
    7 s, and they made each stop take 4 s instead of 1."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "a"),  # noqa: SIM115
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("mlflow server did not start:\n"
                            + (folder / "server.log").read_text()[-3000:])  # fmt: skip
            time.sleep(0.5)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a free 127.0.0.1 port (sqlite store, served artifacts)."""
    port = free_port()
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), port)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)
