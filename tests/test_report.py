"""Reports: Vega-Lite specs that compile, the pivot summary, and report.html rendered by a
real headless Chromium with every chart drawn and no console errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brevpipe.io import storage
from brevpipe.reports import charts
from brevpipe.reports.metrics import classification_metrics
from brevpipe.reports.report import pivot, render_html

CLASSES = ["circle", "square", "triangle"]


def example_charts() -> dict[str, dict]:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 60)
    scores = rng.dirichlet(np.ones(3), 60)
    evaluation = classification_metrics(truth, scores.argmax(axis=1), scores, CLASSES)
    history = [{"epoch": e, "loss": 1 / e, "accuracy": 0.5 + e / 10, "val_loss": 1.2 / e,
                "val_accuracy": 0.4 + e / 10} for e in (1, 2, 3)]  # fmt: skip
    return {
        "dataset_summary": charts.dataset_summary(
            {"train": {"circle": 8, "square": 7}, "devel": {"circle": 2, "square": 3}}
        ),
        "training_curves": charts.training_curves(history),
        "confusion_devel": charts.confusion_matrix(
            evaluation["confusion_matrix"], CLASSES, "devel"
        ),  # fmt: skip
        "thresholds_devel": charts.threshold_curves(evaluation["threshold_curves"], "devel"),
        "iou_dice_devel": charts.per_class_scores(  # the segmentation report's
            {"iou/circle": 0.5, "dice/circle": 0.67, "iou/square": 0.4, "dice/square": 0.57},
            ["iou", "dice"], "devel",
        ),  # fmt: skip
    }


@pytest.mark.parametrize("name", list(example_charts()))
def test_chart_specs_compile_with_vega_lite(name: str) -> None:
    import vl_convert

    spec = example_charts()[name]
    vega = vl_convert.vegalite_to_vega(spec)
    assert vega["$schema"].startswith("https://vega.github.io/schema/vega/")
    assert vl_convert.vegalite_to_svg(spec).startswith("<svg")


def test_pivot_counts() -> None:
    samples = pd.DataFrame({
        "category": [("a",), ("a",), ("b",), ("a", "b")],
        "purpose": ["train", "devel", "train", "train"],
    })  # fmt: skip
    table = pivot(samples, ["category"], ["purpose"])
    assert table["row_keys"] == [["a"], ["a+b"], ["b"]]
    assert table["col_keys"] == [["devel"], ["train"]]
    assert table["counts"] == [[1, 1], [0, 1], [0, 1]]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    why = ("no headless Chromium here: `make browser` installs Debian's (as root, with the "
           "package mirror); BREVPIPE_NO_BROWSER=1 skips this test where that cannot be")
    if os.environ.get("BREVPIPE_NO_BROWSER") == "1":
        pytest.skip(why)
    pytest.fail(why)  # the README promises the rendered report: a missing browser is a failure


def render(page: Path) -> tuple[str, str]:
    """The DOM after scripts ran, and the browser's console log."""
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "CONSOLE" in line and ("error" in line.lower() or "Uncaught" in line)]  # fmt: skip


def drawn_charts(dom: str) -> int:
    """Chart containers that vega-embed filled with a canvas or an SVG."""
    blocks = re.findall(r'<div class="chart vega-embed[^"]*" id="chart-\d+"[^>]*>(.*?)</div>',
                        dom, flags=re.S)  # fmt: skip
    return sum(1 for b in blocks if "<canvas" in b or "<svg" in b)


def test_report_html_renders_every_chart_offline(tmp_path: Path) -> None:
    specs = example_charts()
    page = tmp_path / "report.html"
    page.write_text(render_html(
        title="t", summary={"job": "x"}, metrics={"devel/accuracy": 0.5}, charts=specs,
        pivot_data=pivot(pd.DataFrame({"category": [("a",)], "purpose": ["train"]}),
                         ["category"], ["purpose"]), images={},
    ))  # fmt: skip
    assert "http" not in re.sub(r"https://vega\.github\.io/schema[^\"]*", "", page.read_text()
                                .split("<script>")[-1])  # fmt: skip
    dom, log = render(page)
    assert drawn_charts(dom) == len(specs)
    assert ">Chart could not be drawn" not in dom
    assert console_errors(log) == []


@pytest.mark.slow
def test_job_report_in_the_bucket(tiny_config) -> None:
    from brevpipe.engine.runner import run_job

    job = run_job(tiny_config("tracking=none"))
    output = storage.read_json(job.output_url)
    bucket = Path(job.bucket_url) / "artifacts"
    names = {p.name for p in (bucket / "charts").glob("*.vl.json")}
    assert names == {"dataset_summary.vl.json", "training_curves.vl.json",
                     "confusion_devel.vl.json", "thresholds_devel.vl.json"}  # fmt: skip
    pivot_data = storage.read_json(str(bucket / "samples_pivot.json"))
    assert sum(map(sum, pivot_data["counts"])) == output["samples"]["count"]
    assert (bucket / "samples_atlas.png").is_file()
    assert output["stages"]["report"]["status"] == "completed"
    dom, log = render(bucket / "report.html")
    assert drawn_charts(dom) == 4
    assert dom.count("data:image/png;base64,") >= 2
    assert console_errors(log) == []


def test_the_vega_bundle_is_made_once_per_vl_convert_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vl-convert bundles Vega anew on every call (2 s per report): the bundle is kept in the
    user cache folder, and a folder that cannot be written costs time, not the report."""
    import vl_convert

    from brevpipe.reports.report import javascript_bundle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = javascript_bundle.__wrapped__()
    kept = tmp_path / "cache" / "brevpipe" / "assets" / f"vega-bundle-{vl_convert.__version__}.js"
    assert kept.read_text(encoding="utf-8") == bundle and "vegaEmbed" in bundle
    assert not list(kept.parent.glob("*.tmp-*"))
    kept.write_text(bundle + "// kept", encoding="utf-8")
    assert javascript_bundle.__wrapped__().endswith("// kept")  # read, not bundled again

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    assert javascript_bundle.__wrapped__() == bundle
