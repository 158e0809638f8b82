"""Job overhead: the default ``brevpipe run`` against the same job as a plain Keras script.

Each round runs both as fresh processes of this venv, alternating which goes first:
``brevpipe run`` (the default job: shapes dataset, ``small_cnn``, 15 epochs, evaluate, preview,
export, report, mirrored into a sqlite MLflow store) and bench/plain_keras_job.py (Keras's
folder loader, the same model and optimizer, 15 epochs, evaluate, ``model.save``). A round
before the timed ones warms the page cache and creates the data cache and the MLflow store
(as any user's second job finds them). Also timed: process start to the first training step
(a Keras callback writes the time) against ``import tensorflow, keras`` alone, and with
``--sweep`` a 4-job sweep (``-m seed=1,2,3,4``, basic launcher) against four plain scripts
run back to back. Prints medians, ranges and ratios; writes bench/results/job_overhead.json.

    .venv/bin/python bench/job_overhead.py [--rounds 5] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "job_overhead.json"
BREVPIPE = [sys.executable, "-m", "brevpipe", "run"]
# the import's own end, written like the first step's (the interpreter's exit is not timed)
IMPORT = ("import os, time, tensorflow, keras; "
          "open(os.environ['FIRST_STEP_FILE'], 'w').write(repr(time.time()))")
CLOCK = "trainer.callbacks=[{_target_:first_step.clock}]"


def timed(command: list[str], work: Path, clock: bool = False) -> tuple[float, float | None]:
    """Wall seconds of ``command``, and seconds from its start to its first training step."""
    stamp = work / "first-step"
    stamp.unlink(missing_ok=True)
    path = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "FIRST_STEP_FILE": str(stamp)}
    started = time.time()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    first = float(stamp.read_text()) - started if clock and stamp.exists() else None
    return wall, first


def commands(work: Path, folder: str) -> dict[str, list[str]]:
    return {
        "brevpipe": [*BREVPIPE, f"job.root={work / 'jobs'}", CLOCK],
        "plain": [sys.executable, str(BENCH / "plain_keras_job.py"), folder, str(work / "out")],
        "import": [sys.executable, "-c", IMPORT],
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def line(name: str, values: list[float]) -> str:
    s = summary(values)
    return f"  {name:<34} {s['median']:7.2f} s   ({s['min']:.2f}-{s['max']:.2f})"


def sweep(work: Path, folder: str) -> dict[str, float]:
    """A 4-job sweep of the default job against 4 plain scripts run back to back."""
    plain = commands(work, folder)["plain"]
    started = time.time()
    for seed in (1, 2, 3, 4):
        timed([*plain, "--seed", str(seed)], work)
    plain_s = time.time() - started
    sweep_s, _ = timed([*BREVPIPE, "-m", "seed=1,2,3,4", f"job.root={work / 'jobs'}"], work)
    return {"plain_x4": plain_s, "brevpipe_sweep": sweep_s, "ratio": sweep_s / plain_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="also time a 4-job sweep")
    args = parser.parse_args()

    from brevpipe.data.shapes import ShapesDataset

    shapes = ShapesDataset()
    shapes.find_samples()  # generated once, into the dataset cache
    folder = str(shapes.folder)
    walls: dict[str, list[float]] = {"brevpipe": [], "plain": [], "import": []}
    firsts: dict[str, list[float]] = {"brevpipe": [], "plain": [], "import": []}
    with tempfile.TemporaryDirectory(prefix="brevpipe-bench-") as tmp:
        work = Path(tmp)
        runs = commands(work, folder)
        for name in ("brevpipe", "plain"):
            timed(runs[name], work)  # warm-up, not timed
        for round_ in range(args.rounds):
            order = ["brevpipe", "plain"] if round_ % 2 == 0 else ["plain", "brevpipe"]
            for name in [*order, "import"]:
                wall, first = timed(runs[name], work, clock=True)
                walls[name].append(wall)
                if first is not None:
                    firsts[name].append(first)
            print(f"round {round_ + 1}: brevpipe {walls['brevpipe'][-1]:.1f} s, plain "
                  f"{walls['plain'][-1]:.1f} s; first step: brevpipe "
                  f"{firsts['brevpipe'][-1]:.1f} s, plain {firsts['plain'][-1]:.1f} s, "
                  f"import tensorflow, keras {firsts['import'][-1]:.1f} s")  # fmt: skip
        swept = sweep(work, folder) if args.sweep else None

    med = {k: statistics.median(v) for k, v in walls.items() if v}
    first = {k: statistics.median(v) for k, v in firsts.items() if v}
    ratio = med["brevpipe"] / med["plain"]
    # this machine kind's speed drifts between minutes (the same script: 16 s, then 26 s):
    # the ratio within each round, whose two jobs ran back to back, is the steadier figure
    pairs = [b / p for b, p in zip(walls["brevpipe"], walls["plain"], strict=True)]
    print(f"\njob wall time, median of {args.rounds} alternating rounds (range):")
    print(line("brevpipe run (default job)", walls["brevpipe"]))
    print(line("plain Keras script", walls["plain"]))
    print(f"  brevpipe / plain = {ratio:.3f} (target <= 1.15); per round: "
          + ", ".join(f"{r:.2f}" for r in pairs) + f" (median {statistics.median(pairs):.3f})")
    print("process start to the first training step:")
    print(line("brevpipe run", firsts["brevpipe"]))
    print(line("plain Keras script", firsts["plain"]))
    print(line("import tensorflow, keras", firsts["import"]))
    extra = first["brevpipe"] - first["import"]
    print(f"  brevpipe - import = {extra:+.2f} s (target <= +2 s)")
    if swept:
        print(f"4-job sweep: brevpipe -m seed=1,2,3,4 {swept['brevpipe_sweep']:.1f} s, "
              f"plain x4 {swept['plain_x4']:.1f} s; ratio {swept['ratio']:.3f} "
              "(target <= 1.15)")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "job_overhead", "rounds": args.rounds,
        "wall_seconds": {k: summary(v) for k, v in walls.items()},
        "first_step_seconds": {k: summary(v) for k, v in firsts.items()},
        "ratio": ratio, "round_ratios": pairs, "first_step_minus_import": extra,
        "sweep": swept, "runs": walls,
        "bytecode_writes_off": os.environ.get("PYTHONDONTWRITEBYTECODE") == "1",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }, indent=2))  # fmt: skip
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
