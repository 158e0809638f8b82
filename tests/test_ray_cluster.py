"""A sweep on a real Ray cluster that shares nothing but the job root bucket.

A Ray head and one worker node (``ray start``, one CPU each, each with its own working
directory, temp dir and data cache) on 127.0.0.1, moto's S3 server for the job root, an
``mlflow server`` subprocess; ``brevpipe run -m hydra/launcher=ray`` runs from a third folder.
The jobs find the sweep's MLflow parent run through the bucket (``<root>/sweeps/<id>.json``),
never through the driver's disk.

The cluster is stopped by its own process ids (each ``ray start --block`` leads a process
group of its own) and its own temp dir, never with ``ray stop``, which would kill every Ray on
the machine, tests/test_tracking.py's local Ray included. Both Ray tests are in one xdist group
(``make test`` runs with ``--dist loadgroup``), so that two Rays never share the two cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf

from brevpipe.integrations.sweep import job_root, parent_run, sweep_id
from brevpipe.io import storage
from brevpipe.jobs import layout, records
from tests.conftest import S3_ENV, free_port, tiny_overrides

BIN = Path(sys.executable).parent
JOBS = 4


# Ray 2.60: a head turns token authentication on when ~/.ray/auth_token exists (a local
# ray.init() writes one), and a worker node or driver without the token cannot join; every
# process of this cluster gets the cluster's own token.
RAY_TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}


def node_env(node: Path) -> dict[str, str]:
    """What a node (or the driver) gets: storage credentials, the cluster's token, a data cache
    of its own; no S3 endpoint (the job config gives it), no other cluster's Ray address."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ENDPOINT_URL_S3", "RAY_ADDRESS")}  # fmt: skip
    return {**env, **S3_ENV, **RAY_TOKEN, "BREVPIPE_CACHE_ROOT": str(node / "cache"),
            "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DEDUP_LOGS": "0"}  # each job's line forwarded, not merged  # fmt: skip


@dataclass
class RayNode:
    name: str
    folder: Path  # its working directory, temp dir, data cache and log
    process: subprocess.Popen

    @property
    def temp_dir(self) -> Path:
        return self.folder / "tmp"

    @property
    def log(self) -> Path:
        return self.folder / "ray-start.log"

    def job_lines(self) -> str:
        """What the Ray workers of this node printed (the jobs' stdout and stderr)."""
        files = self.temp_dir.glob("session_*/logs/worker-*")
        return "\n".join(p.read_text(errors="replace") for p in files)


def start_node(folder: Path, name: str, *args: str) -> RayNode:
    """``ray start --block`` in a process group of its own; returns once Ray says it runs."""
    node = folder / name
    (node / "cwd").mkdir(parents=True)
    # --temp-dir is per node since Ray 2.x ("Can be specified per node", ray start --help)
    command = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
               "--num-cpus", "1", "--temp-dir", str(node / "tmp"),
               "--object-store-memory", str(80 * 2**20), "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(free_port()),
               "--metrics-export-port", str(free_port()), *args]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=node / "cwd", env=node_env(node), start_new_session=True,
        stdout=open(node / "ray-start.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    started = RayNode(name, node, process)
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in started.log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_node(started)
            pytest.fail(f"ray start ({name}) failed:\n{started.log.read_text()[-2000:]}")
        time.sleep(0.5)
    return started


def pids_using(text: str) -> list[int]:
    """The processes whose command line contains ``text`` (from /proc; none elsewhere)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
    return pids


def stop_node(node: RayNode) -> None:
    """Stop one node by its own processes: SIGTERM to ``ray start --block`` (it stops what it
    started), then SIGKILL to its process group and to anything left using its temp dir."""
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(node.process.pid, signal.SIGKILL)
    node.process.wait(timeout=30)
    for pid in pids_using(str(node.temp_dir)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, list[RayNode]]]:
    """A head and a worker node on 127.0.0.1; yields the head's address and the nodes."""
    if not (BIN / "ray").exists():
        pytest.fail("no `ray` command beside this Python: make install (brevpipe[sweeps])")
    # a short folder: Ray's socket paths (under the temp dir) must stay under 108 characters
    folder = Path(tempfile.mkdtemp(prefix="bpray-", dir="/tmp"))
    port = free_port()
    nodes: list[RayNode] = []
    try:
        nodes.append(start_node(folder, "head", "--head", "--port", str(port),
                                "--include-dashboard", "false",
                                "--dashboard-port", str(free_port()),
                                "--ray-client-server-port", str(free_port())))  # fmt: skip
        nodes.append(start_node(folder, "worker", "--address", f"127.0.0.1:{port}"))
        yield f"127.0.0.1:{port}", nodes
    finally:
        for node in reversed(nodes):
            stop_node(node)
        shutil.rmtree(folder, ignore_errors=True)


def mlflow_tree(client: MlflowClient, objective: str) -> tuple:
    """The sweep's parent run and its children, printed as a tree."""
    experiment = client.get_experiment_by_name("classification")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("brevpipe.sweep") == "true"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    print(f"\nMLflow parent run {parent.info.run_name} ({parent.info.run_id}) "
          f"{parent.info.status} best/{objective}="
          f"{parent.data.metrics.get(f'best/{objective}')}")  # fmt: skip
    for child in sorted(children, key=lambda r: r.data.params.get("seed", "")):
        print(f"  child {child.info.run_name} ({child.info.run_id}) {child.info.status} "
              f"seed={child.data.params.get('seed')} "
              f"{objective}={child.data.metrics.get(objective)}")  # fmt: skip
    return parent, children


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # never beside another Ray (make test: --dist loadgroup)
def test_sweep_on_a_ray_cluster_shares_only_the_bucket(
    ray_cluster: tuple[str, list[RayNode]], mlflow_server: str, s3_bucket: str,
    s3_server: str, tmp_path: Path,
) -> None:  # fmt: skip
    import s3fs

    address, nodes = ray_cluster
    driver = tmp_path / "driver"
    driver.mkdir()
    root = f"{s3_bucket}/jobs"
    # (dataset.cache_dir: each node generates the shapes into it; on one machine that is one
    # folder, on a real cluster one per node)
    overrides = [o for o in tiny_overrides(tmp_path)
                 if not o.startswith(("job.root=", "tracking.uri="))]  # fmt: skip
    command = [
        sys.executable, "-m", "brevpipe", "run", "-m", "hydra/launcher=ray",
        f"+hydra.launcher.ray.init.address={address}",
        # the launcher's default object_store_memory is refused by ray.init(address=...)
        # (facebookresearch/hydra#2893)
        "+hydra.launcher.ray.init.object_store_memory=null", *overrides, f"job.root={root}",
        f"+storage.options.s3.client_kwargs.endpoint_url={s3_server}",
        f"tracking.uri={mlflow_server}", "seed=" + ",".join(str(i + 1) for i in range(JOBS)),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, cwd=driver, env=node_env(driver), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    print(f"sweep of {JOBS} jobs on the cluster: {time.monotonic() - started:.0f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "not nested" not in done.stdout + done.stderr

    # 4 completed jobs in the bucket, and the sweep's record beside them (not on local disk)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    outputs = [json.loads(fs.cat(p)) for p in fs.glob(f"{root}/*/artifacts/output.json")]
    assert sorted(o["seed"] for o in outputs) == list(range(1, JOBS + 1))
    assert {o["job"]["status"] for o in outputs} == {"completed"}
    job_ids = {o["job"]["id"] for o in outputs}
    (record_path,) = fs.glob(f"{root}/sweeps/*.json")
    record = json.loads(fs.cat(record_path))
    assert record_path.endswith(f"/sweeps/{record['sweep_id']}.json")
    assert not list(driver.rglob("brevpipe_sweep.json"))

    # the jobs ran in the Ray workers of both nodes (their logs), none in the driver
    ran_on = {node.name: {i for i in job_ids if f"job {i} completed" in node.job_lines()}
              for node in nodes}  # fmt: skip
    print("jobs per node:", {name: sorted(ids) for name, ids in ran_on.items()})
    assert set.union(*ran_on.values()) == job_ids
    assert all(ran_on.values()), ran_on
    reported = [line for line in (done.stdout + done.stderr).splitlines()
                if any(f"job {i} completed" in line for i in job_ids)]  # fmt: skip
    assert len(reported) == JOBS  # forwarded by Ray with its "(_run_job pid=...)" prefix
    assert all("_run_job pid=" in line for line in reported), reported

    # one parent run with the 4 jobs' runs nested, and the sweep's summary
    objective = record["objective"]
    client = MlflowClient(tracking_uri=mlflow_server)
    parent, children = mlflow_tree(client, objective)
    assert parent.info.run_id == record["run_id"]
    assert len(children) == JOBS
    assert {c.data.tags["brevpipe.job_id"] for c in children} == job_ids
    assert {c.info.status for c in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"
    best = max(o["metrics"][objective] for o in outputs)
    assert parent.data.metrics[f"best/{objective}"] == pytest.approx(best)
    assert {"sweep_children.csv", "sweep_summary.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }

    # brevpipe jobs list shows the 4 jobs (not the sweeps/ folder)
    listed = subprocess.run(
        [sys.executable, "-m", "brevpipe", "jobs", "list", "--root", root, "--format", "json"],
        cwd=driver, capture_output=True, text=True, timeout=120,
        env={**node_env(driver), "AWS_ENDPOINT_URL_S3": s3_server},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-3000:]
    rows = json.loads(listed.stdout)
    print("brevpipe jobs list:", sorted(row["id"] for row in rows))
    assert {row["id"] for row in rows} == job_ids
    assert {row["status"] for row in rows} == {"completed"}


def hydra_of(cwd: Path, sweep_dir: str) -> DictConfig:
    """The parts of a job's ``HydraConfig`` that locate its sweep's record."""
    return OmegaConf.create({"runtime": {"cwd": str(cwd)}, "sweep": {"dir": sweep_dir},
                             "overrides": {"task": ["seed=2"]}})  # fmt: skip


def test_a_job_finds_its_sweep_record_in_the_job_root(tiny_config, tmp_path: Path,
                                                      caplog) -> None:  # fmt: skip
    """Relative roots are taken from the driver's folder; a missing record is a warning."""
    cfg = tiny_config("job.root=jobs")
    hydra_cfg = hydra_of(tmp_path, "multirun/2026-01-02_03-04-05")
    assert parent_run(cfg, hydra_cfg) is None
    assert "is not nested" in caplog.text and "cannot be read" in caplog.text

    root = job_root("jobs", str(tmp_path))
    assert root == str(tmp_path.resolve() / "jobs")
    sid = sweep_id(str(tmp_path), "multirun/2026-01-02_03-04-05")
    assert sid.startswith("2026-01-02_03-04-05-") and sid == sweep_id(
        str(tmp_path), "multirun/2026-01-02_03-04-05")  # fmt: skip
    assert sid != sweep_id(str(tmp_path / "elsewhere"), "multirun/2026-01-02_03-04-05")
    storage.write_json(layout.sweep_record(root, sid), {"run_id": "r1", "tracking_uri": "x"})
    parent = parent_run(cfg, hydra_cfg)
    assert parent == {"run_id": "r1", "tracking_uri": "x", "overrides": "seed=2"}


def test_jobs_list_skips_the_sweeps_folder(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    (root / "0c5e-job").mkdir(parents=True)
    storage.write_json(layout.sweep_record(str(root), "s1"), {"run_id": "r1"})
    assert (root / "sweeps" / "s1.json").is_file()
    assert records.job_ids(str(root)) == ["0c5e-job"]
