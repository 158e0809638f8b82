"""``brevpipe ui`` as a user meets it: a real ``brevpipe ui`` process over jobs made by real
runs (and hostile records written beside them), driven by Debian's Chromium through Playwright.
Each page's screenshot goes to build/ui-screenshots/ (BREVPIPE_SCREENSHOTS elsewhere)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from omegaconf import open_dict

from brevpipe.config.compose import compose
from brevpipe.engine.runner import run_job
from tests.conftest import compose_config, free_port, tiny_overrides
from tests.test_report import chromium

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ui"), pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("BREVPIPE_SCREENSHOTS", REPO / "build" / "ui-screenshots"))
SWEEP = "ui-sweep-0123456789ab"
HOSTILE_NAME = "<script>alert(1)</script>"


def tiny(work: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(work), "tracking=none", *extra]


def run(overrides: list[str], **kwargs: object) -> object:
    """A job run as ``brevpipe run`` runs it: the config composed by Hydra, its group choices
    recorded."""
    cfg = compose(overrides, None, with_hydra=True)
    choices = {k: str(v) for k, v in cfg.hydra.runtime.choices.items()
               if not k.startswith("hydra")}  # fmt: skip
    with open_dict(cfg):
        del cfg["hydra"]
    return run_job(cfg, choices=choices, **kwargs)


def write_record(root: Path, job_id: str, content: bytes) -> None:
    """A job folder with only an output.json: what someone else's bucket may hold."""
    folder = root / job_id / "artifacts"
    folder.mkdir(parents=True)
    (folder / "output.json").write_bytes(content)


def hostile_jobs(root: Path) -> dict[str, str]:
    """Records a dashboard must show as text or as unknown, never as markup or an error."""
    base = {"schema_version": 1, "seed": 1, "config": {"note": '<img src=x onerror="alert(2)">'},
            "job": {"id": "", "name": HOSTILE_NAME, "pipeline": "<b>bold</b>",
                    "status": "completed", "start": "2026-12-01T00:00:00+00:00",
                    "end": "2026-12-01T00:01:00+00:00", "bucket": ""},
            "metrics": {"devel/accuracy": 0.5}}  # fmt: skip
    stringly = {**base, "metrics": {"devel/accuracy": "<i>1</i>"}}
    odd = {**base, "job": {**base["job"], "status": "running", "resumed": {"a": 1},
                           "start": "2026-12-01T00:00:00"},  # a dict, a time without a zone
           "config": {"trainer": "fast", "pipeline": {"key_metric": ["a"]}}}  # fmt: skip
    lineage = {**base, "job": {**base["job"], "tags": ["<b>t</b>", 3]},
               "dataset": {"digest": "<i>d</i>", "source": 5, "count": "x"},
               "tested_model": {"job_id": 5, "model": "<s>m"},
               "mlflow": {"registry": {"name": "<b>reg</b>", "version": ["1"]}}}  # fmt: skip
    deep_config = {**base, "config": json.loads("[" * 700 + "]" * 700)}
    jobs = {"hostile-markup": json.dumps(base).encode(),
            "hostile-metric": json.dumps(stringly).encode(),
            "hostile-broken": b'{"job": {"status": "runn',
            "hostile-deep": b"[" * 100_000 + b"]" * 100_000,
            "hostile-odd": json.dumps(odd).encode(),
            "hostile-lineage": json.dumps(lineage).encode(),
            "hostile-dataset": json.dumps({**base, "dataset": "x", "mlflow": [1],
                                           "tested_model": "y"}).encode(),
            "hostile-deep-config": json.dumps(deep_config).encode(),
            "hostile-\nline": json.dumps(base).encode()}  # fmt: skip
    for job_id, content in jobs.items():
        write_record(root, job_id, content)
    # a predictions table naming what no dashboard may read as a sample image
    (root / "hostile-markup" / "artifacts" / "predictions.csv").write_text(
        "path,purpose,true,predicted\n/dev/zero,test,a,b\n/etc/passwd,test,a,a\n")
    (root / "hostile-metric" / "artifacts" / "predictions.csv").write_bytes(
        b'path,purpose\n"unterminated,\xff\xfe')
    return {job_id: job_id for job_id in jobs}


# Session-scoped: a test process that runs other modules' tests between these (pytest-xdist
# may) makes the jobs once, not once per run of this module's tests.
@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui")


@pytest.fixture(scope="session")
def jobs(work: Path) -> dict[str, str]:
    """A job, a sweep of two trials and a segmentation job, run for real, and the hostile
    records."""
    root = str(work / "jobs")
    plain = run(tiny(work, "job.tags=[line3]"))
    trials = [run(tiny(work, f"seed={seed}"),
                  sweep={"id": SWEEP, "trial": trial, "overrides": [f"seed={seed}"]})
              for trial, seed in enumerate((1, 2))]  # fmt: skip
    unet = [o for o in tiny(work, "pipeline=segmentation", "dataset.samples_per_class=12",
                             "dataset.image_size=32") if not o.startswith("model.dense")]
    segmentation = run(unet)
    assert {plain.status, segmentation.status, *(t.status for t in trials)} == {"completed"}
    hostile_jobs(Path(root))
    return {"root": root, "plain": plain.id, "trial0": trials[0].id, "trial1": trials[1].id,
            "segmentation": segmentation.id}  # fmt: skip


@pytest.fixture(scope="module")
def server(work: Path, jobs: dict[str, str]) -> Iterator[str]:
    """``brevpipe ui`` over the jobs' root and a root that does not exist."""
    port = free_port()
    env = {**os.environ, "BREVPIPE_CACHE_ROOT": str(work / "data-cache"),
           "XDG_CACHE_HOME": str(work / "cache")}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "brevpipe", "ui", "--root", jobs["root"], "--root",
         str(work / "missing"), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail(f"brevpipe ui did not answer: {process.communicate()[0][-3000:]}")
    yield url
    process.terminate()
    log = process.communicate(timeout=30)[0]
    assert log.count("missing does not exist") == 1, log  # the unreadable root, logged once


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """Playwright drives Debian's Chromium (its own browser download is not reachable)."""
    return {**browser_type_launch_args, "executable_path": chromium(), "args": ["--no-sandbox"]}


@pytest.fixture
def watched(page: object) -> Iterator[object]:
    """A page whose console errors and dialogs (an ``alert`` run from a record) fail the test."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)  # fmt: skip
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    yield page
    assert problems == []


def shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def token_of(server: str, job_id: str) -> str:
    html = httpx.get(f"{server}/jobs/{job_id}").text
    return re.search(r'name="token" value="([^"]+)"', html).group(1)


def test_the_jobs_page_lists_the_jobs_a_sweep_and_the_unreadable_root(watched, server, jobs):
    watched.goto(server + "/")
    assert watched.locator(f"a[href='/jobs/{jobs['plain']}']").is_visible()
    sweep = watched.locator("tr.sweep-row")
    assert "2 trials" in sweep.inner_text() and "2 completed" in sweep.inner_text()
    errors = watched.locator(".root-error")
    assert errors.count() == 1 and "missing" in errors.inner_text()
    shot(watched, "1-jobs")
    watched.click(f"a[href='/?sweep={SWEEP}']")
    assert watched.locator("tbody tr").count() == 2


def test_a_status_changes_live_when_a_job_finishes(watched, server, jobs, work):
    reached, release = work / "reached", work / "release"
    job_id = str(uuid.uuid4())
    hold = (f"trainer.callbacks=[{{_target_:tests.helpers.WaitAtEpoch,epoch:1,"
            f"reached:'{reached}',release:'{release}'}}]")  # fmt: skip
    runner = threading.Thread(target=run_job, args=(compose_config(tiny(
        work, f"job.id={job_id}", "trainer.epochs=2", hold)),))
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while not reached.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reached.exists(), "the job never reached its first epoch's end"
        watch_the_row(watched, server, job_id, release)
    finally:
        release.touch()  # never leave the job waiting (300 s) on a failure
        runner.join(120)
    output = Path(jobs["root"]) / job_id / "artifacts" / "output.json"
    ended = json.loads(output.read_text())["job"]["end"]
    print(f"\nstatus change reached the page {watched.seen - _epoch(ended):.2f} s after "
          "output.json said completed (1 s resolution)")


def watch_the_row(watched, server: str, job_id: str, release: Path) -> None:
    watched.goto(server + "/")
    row = watched.locator(f"#job-{job_id}")
    assert row.get_attribute("data-status") == "running"
    assert "epoch 1/2" in row.inner_text()
    watched.evaluate("window.notReloaded = true")
    release.touch()
    watched.wait_for_selector(f"#job-{job_id}[data-status=completed]", timeout=120_000)
    watched.seen = time.time()
    assert watched.evaluate("window.notReloaded") is True


def _epoch(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()


def test_the_job_page_shows_config_stages_curves_report_and_artifacts(watched, server, jobs):
    watched.goto(f"{server}/jobs/{jobs['plain']}")
    watched.wait_for_selector(".chart svg, .chart canvas")
    text = watched.inner_text("main")
    assert "small_cnn" in text and "train" in text and "model/saved_model.tar.gz" in text
    digest = json.loads((Path(jobs["root"]) / jobs["plain"] / "artifacts" / "output.json")
                        .read_text())["dataset"]["digest"]  # fmt: skip
    assert "line3" in text and f"data {digest} (48 images from" in text
    assert watched.locator("iframe.report").count() == 1
    shot(watched, "2-job")


def test_compare_hides_equal_settings_with_changes_only(watched, server, jobs):
    watched.goto(f"{server}/compare?ids={jobs['trial0']},{jobs['trial1']}")
    changed, equal = watched.locator("#config-diff tr.changed"), watched.locator(
        "#config-diff tr.equal")
    assert changed.count() >= 1 and equal.count() > 10
    assert "seed" in changed.first.inner_text()
    assert all(changed.nth(i).is_visible() for i in range(changed.count()))
    assert not any(equal.nth(i).is_visible() for i in range(min(5, equal.count())))
    watched.wait_for_selector(".chart svg, .chart canvas")
    shot(watched, "3-compare")
    watched.uncheck("#changes-only")
    assert equal.first.is_visible() and "changes=0" in watched.url


def test_the_sweep_page_charts_its_trials(watched, server, jobs):
    watched.goto(f"{server}/sweeps/{SWEEP}")
    assert watched.locator("table.trials tbody tr").count() == 2
    watched.wait_for_function("document.querySelectorAll('.chart svg, .chart canvas').length >= 2")
    shot(watched, "4-sweep")


def test_a_confusion_cell_opens_exactly_its_samples(watched, server, jobs):
    table = pd.read_csv(Path(jobs["root"]) / jobs["plain"] / "artifacts" / "predictions.csv")
    purpose = table["purpose"].value_counts().index[0]
    rows = table[table["purpose"] == purpose]
    cells = rows.groupby(["true", "predicted"]).size().sort_values()
    wrong = [cell for cell in cells.index if cell[0] != cell[1]]
    true, predicted = (wrong or list(cells.index))[-1]  # a mistake if there is one
    expected = set(rows[(rows["true"] == true) & (rows["predicted"] == predicted)]["path"])
    watched.goto(f"{server}/jobs/{jobs['plain']}/errors?purpose={purpose}")
    watched.click(f"a.cell[data-true='{true}'][data-predicted='{predicted}']")
    images = watched.locator(".gallery img")
    assert {images.nth(i).get_attribute("alt") for i in range(images.count())} == expected
    watched.wait_for_function("Array.from(document.querySelectorAll('.gallery img'))"
                              ".every(i => i.complete && i.naturalWidth > 0)")
    shot(watched, "5-errors")
    watched.click("a.thumb >> nth=0")
    assert watched.is_visible("#viewer")
    watched.keyboard.press("Escape")
    assert not watched.is_visible("#viewer")


def test_a_segmentation_job_shows_its_worst_images_with_their_masks(watched, server, jobs):
    table = pd.read_csv(Path(jobs["root"]) / jobs["segmentation"] / "artifacts" /
                        "predictions.csv", keep_default_na=False)  # fmt: skip
    purpose = table["purpose"].value_counts().index[0]
    rows = table[table["purpose"] == purpose].sort_values("mean_iou", kind="stable")
    watched.goto(f"{server}/jobs/{jobs['segmentation']}/errors?purpose={purpose}")
    drawn = watched.locator(".gallery figure.wide img")
    assert drawn.count() == min(12, len(rows))
    assert drawn.first.get_attribute("alt") == rows["path"].iloc[0]  # the lowest IoU first
    watched.wait_for_function("Array.from(document.querySelectorAll('.gallery img'))"
                              ".every(i => i.complete && i.naturalWidth > 0)")
    shot(watched, "5b-errors-segmentation")


def test_launch_renders_from_the_schema_refuses_a_wrong_type_and_runs_a_job(watched, server,
                                                                            jobs, work):
    watched.goto(f"{server}/launch")
    watched.select_option("select[name='choice:tracking']", "none")
    watched.wait_for_url(re.compile(r"choice%3Atracking=none|choice:tracking=none"))
    assert watched.get_attribute("[id='set-trainer.epochs']", "data-kind") == "integer"
    shot(watched, "6-launch")
    watched.fill("[id='set-trainer.epochs']", "abc")
    watched.click("#launch-button")
    assert "trainer.epochs: 'abc' is not an integer" in watched.inner_text("#form-error")
    values = {"trainer.epochs": "1", "trainer.batch_size": "8", "model.filters": "[8, 16]",
              "model.dense": "16", "dataset.samples_per_class": "16", "dataset.image_size": "72",
              "dataset.cache_dir": str(work / "datasets"), "loader.target_size": "[32, 32]"}
    for key, value in values.items():
        watched.fill(f"[id='set-{key}']", value)
    watched.click("#launch-button")
    watched.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    job_id = watched.url.rsplit("/", 1)[-1]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = httpx.get(f"{server}/jobs/{job_id}/status").text
        if "completed" in status or "failed" in status:
            break
        time.sleep(1)
    assert "completed" in status
    watched.goto(server + "/")
    assert watched.locator(f"#job-{job_id}[data-status=completed]").count() == 1


def test_try_scores_an_image_through_the_model(watched, server, jobs):
    table = pd.read_csv(Path(jobs["root"]) / jobs["plain"] / "artifacts" / "predictions.csv")
    image = Path(table["path"].iloc[0])
    watched.goto(f"{server}/try?job={jobs['plain']}")
    watched.set_input_files("input[name=files]", str(image))
    watched.click("button[type=submit]")
    watched.wait_for_selector("figure.result")
    predicted = watched.inner_text("b.predicted")
    assert predicted in {"circle", "square", "triangle"}
    assert watched.locator("tr.predicted").count() == 1
    shot(watched, "7-try")


def test_hostile_records_render_as_text_or_unknown(watched, server):
    watched.goto(f"{server}/?q=hostile")
    assert watched.get_by_text(HOSTILE_NAME).count() >= 1  # the name is text, not a script
    text = watched.inner_text("main")
    assert "unknown: artifacts/output.json is nested too deeply" in text
    assert "'metrics' holds values that are not numbers" in text
    for job_id in ("hostile-markup", "hostile-metric", "hostile-broken", "hostile-deep",
                   "hostile-odd", "hostile-deep-config", "hostile-lineage", "hostile-dataset"):
        response = watched.goto(f"{server}/jobs/{job_id}")
        assert response.status == 200, job_id
    watched.goto(f"{server}/jobs/hostile-lineage")  # its tags, registry, tested model: text
    text = watched.inner_text("main")
    assert "<b>reg</b>" in text and "<s>m" in text and "<b>t</b>" not in text
    assert watched.goto(f"{server}/jobs/hostile-markup/errors").status == 200
    assert watched.goto(f"{server}/jobs/hostile-metric/errors").status == 200
    watched.goto(f"{server}/compare?ids=hostile-markup,hostile-deep,hostile-deep-config")
    assert '<img src=x onerror="alert(2)">' in watched.inner_text("#config-diff")
    assert watched.goto(f"{server}/?page=%C2%B2").status == 200  # a superscript two
    assert watched.goto(f"{server}/?page={'9' * 5000}").status == 200


def test_actions_need_the_token_and_the_dashboards_own_origin(server, jobs):
    url = f"{server}/jobs/{jobs['trial1']}/archive"
    token = token_of(server, jobs["trial1"])
    assert httpx.post(url, data={"token": "wrong"}).status_code == 403
    assert httpx.post(url, data={"token": token},
                      headers={"Origin": "http://evil.example"}).status_code == 403
    done = httpx.post(url, data={"token": token}, headers={"Origin": server})
    assert done.status_code == 303
    registry = Path(jobs["root"]) / jobs["trial1"] / "registry.json"
    assert json.loads(registry.read_text())["archived"] is True
    httpx.post(f"{server}/jobs/{jobs['trial1']}/unarchive", data={"token": token},
               headers={"Origin": server})  # fmt: skip
    assert json.loads(registry.read_text())["archived"] is False


def test_artifact_downloads_cannot_leave_the_job_bucket(server, jobs):
    artifacts = Path(jobs["root"]) / jobs["plain"] / "artifacts"
    own = httpx.get(f"{server}/jobs/{jobs['plain']}/files/samples.csv")
    assert own.status_code == 200 and own.content == (artifacts / "samples.csv").read_bytes()
    (artifacts / "planted").symlink_to("/etc/passwd")
    base = f"{server}/jobs/{jobs['plain']}/files/"
    try:
        for path in ("planted", "..%2F..%2Finfo.json", "%2Fetc%2Fpasswd", "stages%2F..%2F..%2Fx",
                     "..\\..\\info.json", "file:%2F%2F%2Fetc%2Fpasswd"):
            assert httpx.get(base + path).status_code == 404, path
    finally:
        (artifacts / "planted").unlink()
    # sample images: only files a job's predictions name, and never a device or a non-image
    for path in ("/dev/zero", "/etc/passwd", "/etc/hostname"):
        answer = httpx.get(f"{server}/jobs/hostile-markup/image", params={"path": path})
        assert answer.status_code == 404, path


def test_a_page_that_rebinds_its_name_to_the_dashboard_is_refused(server, jobs):
    """DNS rebinding: a site whose name now points to 127.0.0.1 reads and posts as itself."""
    evil = {"Host": "evil.example:8765"}
    assert httpx.get(f"{server}/", headers=evil).status_code == 400
    answer = httpx.post(f"{server}/jobs/{jobs['plain']}/archive", data={"token": "x"},
                        headers={**evil, "Origin": "http://evil.example:8765"})  # fmt: skip
    assert answer.status_code == 400
    assert httpx.post(f"{server}/launch", content=b"x" * 100,
                      headers={"Origin": "http://elsewhere.example"}).status_code == 403


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_dashboard_off_this_machine_needs_a_token(tmp_path):
    from starlette.testclient import TestClient

    from brevpipe.ui.app import create_app
    from brevpipe.ui.safety import Guard

    refused = subprocess.run([sys.executable, "-m", "brevpipe", "ui", "--host", "0.0.0.0"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "BREVPIPE_UI_TOKEN": ""})  # fmt: skip
    assert refused.returncode == 2 and "--token" in refused.stderr
    guard = Guard.for_address("0.0.0.0", "a-token-long-enough-1234")
    client = TestClient(create_app([str(tmp_path)], guard, tmp_path / "state"))
    assert client.get("/").status_code == 401
    assert client.get("/?token=a-token-long-enough-1234").status_code == 200
    assert client.get("/").status_code == 200  # the cookie the first visit set


def test_launch_writes_values_in_hydras_own_syntax():
    """Form values reach ``brevpipe run`` as Hydra reads them: quotes, backslashes, accents,
    commas and brackets in strings; lists; mappings with plain keys."""
    from brevpipe.config.composed import compose_plain
    from brevpipe.ui.launch import hydra_value

    for key, value in [("job.name", "a\\w 'q' données, [x]=y"), ("model.filters", [8, 16]),
                       ("trainer.optimizer", {"_target_": "optimizer:adam", "_partial_": True}),
                       ("dataset.cache_dir", "/tmp/a,b[c]=d")]:  # fmt: skip
        composed, _ = compose_plain([f"{key}={hydra_value(value)}"])
        group, name = key.split(".")
        assert composed[group][name] == value, key


def test_jobs_diff_prints_only_the_changed_keys_and_metric_deltas(jobs, capsys):
    from brevpipe.commands import jobs as jobs_command

    assert jobs_command.main(["diff", jobs["trial0"], jobs["trial1"], "--root", jobs["root"],
                              "--format", "json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert {row["key"] for row in result["config"]} == {"seed"}
    assert result["metrics"] and all(row["changed"] for row in result["metrics"])
    assert all(d is None or isinstance(d, float) for row in result["metrics"]
               for d in row["deltas"])  # fmt: skip
    jobs_command.main(["diff", jobs["trial0"], jobs["trial1"], "--root", jobs["root"]])
    printed = capsys.readouterr().out
    assert re.search(r"^seed\s+1\s+2", printed, flags=re.M) and "trainer.epochs" not in printed
    assert re.search(r"\([+-]\d", printed)
