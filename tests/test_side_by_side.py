"""Two jobs in one process (a notebook, a sweep launcher, the dashboard) keep their own storage
settings and data cache: nothing of a job's lives in a module global."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from brevpipe.api import run_job
from brevpipe.io import cache as data_cache
from brevpipe.io import storage

SEEN: dict[str, list[tuple[float, str]]] = {}
BOTH_RUNNING = threading.Barrier(2)


def _settings() -> tuple[float, str]:
    cache = data_cache.active()
    return storage.current().timeout_s, cache.root if cache else "none"


def observe(ctx: Any, samples: Any, **params: Any) -> dict[str, Any]:
    """A split stage that records the storage timeout and the data cache it sees, before and
    after the other job has set its own, and in a worker thread as data code reads."""
    seen = SEEN.setdefault(ctx.job_id, [_settings()])
    BOTH_RUNNING.wait(timeout=120)  # the other job has configured its settings by now
    seen.append(_settings())
    with ThreadPoolExecutor(1) as pool:
        seen.append(pool.submit(storage.carried(_settings)).result())
    BOTH_RUNNING.wait(timeout=120)
    seen.append(_settings())
    return {"split_samples": samples}


def test_two_jobs_interleaved_in_one_process_see_their_own_settings(tiny_config, tmp_path):
    only_split = [f"~pipeline.stages.{name}" for name in
                  ("train", "evaluate", "preview", "export", "report")]  # fmt: skip
    configs = {
        timeout: tiny_config(
            "tracking=none", f"storage.timeout_s={timeout}",
            f"runtime.cache_root={tmp_path / f'cache-{timeout}'}",
            "pipeline.stages.split._target_=tests.test_side_by_side.observe", *only_split,
        )  # fmt: skip
        for timeout in (7, 11)
    }
    with ThreadPoolExecutor(2) as pool:
        jobs = {t: pool.submit(run_job, cfg) for t, cfg in configs.items()}
        jobs = {t: future.result(timeout=300) for t, future in jobs.items()}
    for timeout, job in jobs.items():
        assert job.status == "completed"
        expected = (float(timeout), str(Path(tmp_path / f"cache-{timeout}").resolve()))
        assert SEEN[job.id] == [expected] * 4, SEEN
    # the caller's own settings are as they were
    assert storage.current().timeout_s == storage.DEFAULT_TIMEOUT_S
