"""Pruning: a 12-trial Optuna sweep of the default job with the median pruner, against the same
sweep without pruning.

All are ``brevpipe run -m search=...`` over ``trainer.lr`` and ``model.dense`` (TPE, its sampler
seeded from ``seed``, so the sweeps ask the same first ten trials) on the built-in shapes data,
the default job (15 epochs), basic launcher, each a fresh process in a folder of its own:
``unpruned`` is ``search=lr_dense``; ``pruned`` is ``search=lr_dense_pruned`` (the median
pruner on each epoch's training accuracy, after 2 epochs and 2 finished trials);
``pruned_val`` the same pruner on each epoch's devel accuracy. Prints, for each, the epochs
trained, the wall time and the best objective (``devel/accuracy``), and the ratios; writes
bench/results/sweep_pruning.json with each trial's history. Targets (issue 27): at most 50% of
the epochs, a best objective within 0.01 of the unpruned sweep's.

    .venv/bin/python bench/sweep_pruning.py [--trials 12] [--only unpruned|pruned|pruned_val]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "sweep_pruning.json"
# the preset prunes on the epoch's training accuracy; "pruned_val" on its devel accuracy
SWEEPS = {"unpruned": ["search=lr_dense"], "pruned": ["search=lr_dense_pruned"],
          "pruned_val": ["search=lr_dense_pruned", "search.epoch_metric=val_accuracy"]}


def run_sweep(work: Path, trials: int, sweep: list[str]) -> dict[str, object]:
    """One sweep in ``work``: its wall time, the epochs its trials trained, its best value."""
    work.mkdir(parents=True)
    command = [sys.executable, "-m", "brevpipe", "run", "-m", *sweep,
               f"hydra.sweeper.n_trials={trials}", f"job.root={work / 'jobs'}",
               f"tracking.uri=sqlite:///{work / 'mlflow.db'}"]  # fmt: skip
    started = time.time()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    outputs = [json.loads(p.read_text()) for p in (work / "jobs").glob("*/artifacts/output.json")]
    completed = [o for o in outputs if o["job"]["status"] == "completed"]
    best = max((o["metrics"]["devel/accuracy"] for o in completed), default=None)
    return {
        "wall_s": round(wall, 1),
        "epochs": sum(len(o["history"]) for o in outputs),
        "planned_epochs": sum(o["config"]["trainer"]["epochs"] for o in outputs),
        "trials": len(outputs),
        "pruned": sum(o["job"]["status"] == "pruned" for o in outputs),
        "best": best,
        "trials_detail": sorted(({
            "trial": o["sweep"]["trial"], "status": o["job"]["status"],
            "lr": o["config"]["trainer"]["lr"], "dense": o["config"]["model"]["dense"],
            "devel/accuracy": o["metrics"].get("devel/accuracy"),
            "history": {key: [round(h[key], 4) for h in o["history"]]
                        for key in ("accuracy", "loss", "val_accuracy", "val_loss")},
        } for o in outputs), key=lambda t: t["trial"]),  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--only", choices=list(SWEEPS))
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="brevpipe-bench-pruning-") as tmp:
        # the unpruned sweep first: the pruned ones then find the same warm data cache
        for name, sweep in SWEEPS.items():
            if args.only in (None, name):
                results[name] = run_sweep(Path(tmp, name), args.trials, sweep)
                row = results[name]
                print(f"{name:<10} {row['trials']:>3} trials  {row['pruned']:>3} pruned  "
                      f"{row['epochs']:>4} of {row['planned_epochs']} epochs  "
                      f"{row['wall_s']:>7.1f} s  best devel/accuracy {row['best']}",
                      flush=True)  # fmt: skip
    ratios = {}
    for name in ("pruned", "pruned_val"):
        if name in results and "unpruned" in results and None not in (
                results[name]["best"], results["unpruned"]["best"]):  # fmt: skip
            pruned, unpruned = results[name], results["unpruned"]
            ratios[name] = {"epochs": pruned["epochs"] / unpruned["epochs"],  # type: ignore[operator]
                            "wall": pruned["wall_s"] / unpruned["wall_s"],  # type: ignore[operator]
                            "best_difference": unpruned["best"] - pruned["best"]}  # type: ignore[operator]  # fmt: skip
            print(f"{name}/unpruned: epochs {ratios[name]['epochs']:.2f} (target <= 0.50), wall "
                  f"time {ratios[name]['wall']:.2f}, best objective lower by "
                  f"{ratios[name]['best_difference']:.4f} (target <= 0.01)")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"results": results, "ratios": ratios, "trials": args.trials,
                                   "machine": platform.platform(),
                                   "python": platform.python_version()}, indent=2))  # fmt: skip
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
