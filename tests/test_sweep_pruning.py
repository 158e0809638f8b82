"""Optuna sweeps that prune lagging trials and resume after a crash, with the study in
Optuna's journal under the job root (a local folder, or moto's S3 through s3fs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import s3fs
from mlflow import MlflowClient
from optuna.trial import TrialState

from brevpipe.commands import jobs as jobs_command
from brevpipe.commands import sweep as sweep_command
from brevpipe.integrations.optuna_storage import FsspecJournal, open_storage
from tests.conftest import tiny_overrides

# lr 1e-7 does not learn: its devel loss stays near ln(3) while lr 0.01's falls
LAGGING = ["search=lr_dense_pruned", "trainer.lr=choice(0.01,1e-7)", "sweep.objective=devel/loss",
           "sweep.direction=minimize", "search.epoch_metric=val_loss", "search.startup_trials=1",
           "search.warmup_epochs=1"]


def run_sweep(folder: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "brevpipe", "run", "-m", *tiny_overrides(folder), *args,
         "hydra.sweep.dir=multirun/s"], cwd=folder, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return done


def study_of(journal: str) -> optuna.Study:
    [summary] = optuna.get_all_study_summaries(open_storage(journal))
    return optuna.load_study(study_name=summary.study_name, storage=open_storage(journal))


@pytest.mark.slow
def test_a_lagging_trial_is_pruned_and_says_so_everywhere(tmp_path: Path, capsys) -> None:
    """Trials two at a time on joblib's worker processes, each opening the study from the
    journal under the job root."""
    done = run_sweep(tmp_path, *LAGGING, "hydra.sweeper.n_trials=5", "trainer.epochs=4",
                     "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    root = tmp_path / "jobs"
    outputs = {o["sweep"]["trial"]: o for o in map(json.loads, map(Path.read_text,
               root.glob("*/artifacts/output.json")))}  # fmt: skip
    assert sorted(outputs) == [0, 1, 2, 3, 4]
    lr = {n: o["config"]["trainer"]["lr"] for n, o in outputs.items()}
    status = {n: o["job"]["status"] for n, o in outputs.items()}
    first_good = min(n for n in lr if lr[n] == 0.01)
    lagging = [n for n in lr if lr[n] == 1e-7 and n // 2 > first_good // 2]  # a later batch
    assert lagging, f"the sampler never picked the lagging lr after a good one: {lr}"
    assert all(status[n] == "pruned" for n in lagging), (lr, status)
    assert all(status[n] == "completed" for n in lr if lr[n] == 0.01), (lr, status)
    for n in lagging:
        output = outputs[n]
        assert 1 <= len(output["history"]) < 4  # it stopped at the end of an epoch
        assert output["stages"]["train"]["status"] == "pruned"
        assert "pruned after epoch" in output["job"]["error"]
        stage = root / output["job"]["id"] / "artifacts" / "stages" / "train"
        assert (stage / "checkpoint").is_dir()  # the epochs it trained stay
    pruned_ids = sorted(outputs[n]["job"]["id"] for n in status if status[n] == "pruned")

    # the study: pruned, not failed; jobs list --status pruned
    journal = next((root / "sweeps").glob("*.optuna"))
    trials = study_of(str(journal)).trials
    assert all(t.intermediate_values for t in trials)  # each worker reported its epochs
    states = {t.number: t.state for t in trials}
    assert {n for n, s in states.items() if s == TrialState.PRUNED} == {
        n for n in status if status[n] == "pruned"}
    assert TrialState.FAIL not in states.values()
    assert jobs_command.main(["list", "--root", str(root), "--status", "pruned",
                              "--format", "json"]) == 0  # fmt: skip
    listed = json.loads(capsys.readouterr().out)
    assert sorted(job["id"] for job in listed) == pruned_ids

    # MLflow: KILLED with the brevpipe.pruned tag; the parent run did not fail
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("brevpipe.sweep") == "true"]
    pruned_runs = [r for r in runs if r.data.tags.get("brevpipe.pruned") == "true"]
    assert sorted(r.data.tags["brevpipe.job_id"] for r in pruned_runs) == pruned_ids
    assert {r.info.status for r in pruned_runs} == {"KILLED"}
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["pruned_trials"] == len(pruned_ids)

    # brevpipe sweep show: the status of each trial and the epochs pruning saved
    assert sweep_command.main(["show", journal.name.removesuffix(".optuna"),
                               "--root", str(root)]) == 0  # fmt: skip
    shown = capsys.readouterr().out
    assert f"{len(pruned_ids)} pruned" in shown.splitlines()[0] and "ended" in shown
    saved = sum(4 - len(outputs[n]["history"]) for n in status if status[n] == "pruned")
    assert f"pruning saved {saved} of 20 epochs" in shown


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_optuna_sweep_on_s3_killed_and_resumed_finishes_its_trials_once(
    tmp_path: Path, s3_bucket: str, capsys
) -> None:
    root = f"{s3_bucket}/jobs"
    folder = tmp_path / "sweep"
    folder.mkdir()
    killed = subprocess.Popen(
        [sys.executable, "-m", "brevpipe", "run", "-m", *tiny_overrides(folder), f"job.root={root}",
         "search=lr_dense", "hydra.sweeper.n_trials=3", "trainer.epochs=12",
         "runtime.heartbeat_s=1", "hydra.sweep.dir=multirun/s"],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    fs = s3fs.S3FileSystem(skip_instance_cache=True)

    def outputs() -> dict[int, dict]:
        found = {}
        fs.invalidate_cache()
        for path in fs.glob(f"{root}/*/artifacts/output.json"):
            output = json.loads(fs.cat(path))
            found[output["sweep"]["trial"]] = output
        return found

    deadline = time.monotonic() + 400
    while not ((found := outputs()).get(0, {}).get("job", {}).get("status") == "completed"
               and len(found.get(1, {}).get("history", [])) >= 3):  # epoch 2 checkpointed
        assert killed.poll() is None and time.monotonic() < deadline, killed.stdout.read()
        time.sleep(0.1)  # trial 1 then has 9 epochs to go: over a second
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(30)
    at_kill = outputs()
    assert at_kill[1]["job"]["status"] == "running"
    [journal] = fs.glob(f"{root}/sweeps/*.optuna")
    sweep = journal.rsplit("/", 1)[-1].removesuffix(".optuna")
    states = [t.state for t in study_of(f"s3://{journal}").trials]
    assert states[0] == TrialState.COMPLETE and states[1] == TrialState.RUNNING

    while True:  # trial 1's heartbeat goes stale: lost, and the sweep interrupted
        assert sweep_command.main(["list", "--root", root, "--format", "json"]) == 0
        [listed] = json.loads(capsys.readouterr().out)
        if listed["status"] == "interrupted":
            break
        assert time.monotonic() < deadline + 60, listed
        time.sleep(0.5)
    resumed = subprocess.run([sys.executable, "-m", "brevpipe", "sweep", "resume", sweep,
                              "--root", root], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    after = outputs()
    assert sorted(after) == [0, 1, 2]
    assert after[0]["job"]["end"] == at_kill[0]["job"]["end"]  # trial 0 was not run again
    assert after[1]["job"]["resumed"] and after[1]["stages"]["train"]["resumed_after_epoch"] >= 2
    assert after[1]["config"]["trainer"]["lr"] == at_kill[1]["config"]["trainer"]["lr"]
    trials = study_of(f"s3://{journal}").trials
    assert [t.number for t in trials] == [0, 1, 2]  # none asked twice
    assert all(t.state == TrialState.COMPLETE for t in trials)  # no pruner here
    for trial in trials:
        job = after[trial.number]
        assert job["job"]["id"].endswith(f"-t00{trial.number}")
        assert trial.value == pytest.approx(job["metrics"]["devel/accuracy"])
        assert trial.params["trainer.lr"] == job["config"]["trainer"]["lr"]
    assert sweep_command.main(["show", sweep, "--root", root]) == 0
    assert "ended" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_journal_keeps_every_append_of_concurrent_writers_in_one_order(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    """Writers with journals of their own (as processes have) append at once; every reader
    then sees every batch exactly once, in the same order."""
    url = str(tmp_path / "j") if where == "local" else \
        f"{request.getfixturevalue('s3_bucket')}/sweeps/x.optuna"  # fmt: skip

    def write(writer: int) -> None:
        journal = FsspecJournal(url)
        for i in range(8):
            journal.append_logs([{"op_code": 8, "worker_id": str(writer), "writer": writer,
                                  "i": sign * i} for sign in (1, -1)])  # fmt: skip

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first, second = FsspecJournal(url).read_logs(0), FsspecJournal(url).read_logs(0)
    assert first == second and len(first) == 4 * 8 * 2
    assert sorted((e["writer"], e["i"]) for e in first) == sorted(
        (w, s * i) for w in range(4) for i in range(8) for s in (1, -1))
    assert FsspecJournal(url).read_logs(60) == first[60:]


def test_an_optuna_study_in_the_journal_on_s3_is_shared_by_two_workers(s3_bucket: str) -> None:
    url = f"{s3_bucket}/jobs/sweeps/shared.optuna"
    optuna.create_study(study_name="s", storage=open_storage(url))

    def work() -> None:
        study = optuna.load_study(study_name="s", storage=open_storage(url))
        study.optimize(lambda t: (t.suggest_float("x", -1, 1)) ** 2, n_trials=3)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trials = optuna.load_study(study_name="s", storage=open_storage(url)).trials
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.parametrize(("args", "message"), [
    (["seed=1,2", "search.pruner=median"], "prunes the trials of an Optuna sweep"),
    (["search=lr_dense", "search.pruner=sometimes"], "search.pruner=sometimes is not a pruner"),
    (["search=lr_dense_pruned", "sweep.objective=test/f1", "search.epoch_metric=null"],
     "has no value per epoch"),
    (["search=lr_dense_pruned", "sweep.direction=minimize"], "which rises as trials do better"),
])  # fmt: skip
def test_a_pruner_the_sweep_cannot_use_is_refused_before_any_trial(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_sweep(tmp_path, *args, timeout=300)
    assert done.returncode != 0 and message in done.stderr + done.stdout, done.stderr[-2000:]
    assert not (tmp_path / "jobs").exists() or not list((tmp_path / "jobs").glob("*/info.json"))


@pytest.mark.parametrize(("args", "message"), [
    (["search=lr_dense", "search.storage=sqlite:///relative.db"], "give an absolute path"),
    (["search=lr_dense", "search.storage=/tmp/study"], "is not an RDB URL"),
    (["search=lr_dense", "job.root=memory://jobs"], "has no exclusive writes"),
])  # fmt: skip
def test_a_study_storage_the_trials_cannot_share_is_refused_before_any_trial(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_sweep(tmp_path, *args, timeout=300)
    assert done.returncode != 0 and message in done.stderr + done.stdout, done.stderr[-2000:]
    assert not list(tmp_path.glob("jobs/*/info.json"))


def test_a_planted_trial_in_the_journal_is_refused_not_run(tmp_path: Path) -> None:
    """A RUNNING trial whose parameter is not the search space's (an override that would
    build a callback) stops the sweep before it launches anything."""
    from brevpipe.integrations.optuna_storage import journal_url
    from brevpipe.integrations.sweep import sweep_id

    sweep = sweep_id(str(tmp_path), "multirun/s")
    study = optuna.create_study(study_name=sweep, direction="maximize",
                                storage=open_storage(journal_url(str(tmp_path / "jobs"), sweep)))
    planted = study.ask({"+trainer.callbacks": optuna.distributions.CategoricalDistribution(
        ["[{_target_:os.system,_args_:[touch /tmp/brevpipe-planted]}]"])})  # fmt: skip
    planted.set_user_attr("brevpipe.sweep", sweep)
    done = run_sweep(tmp_path, "search=lr_dense", "hydra.sweeper.n_trials=2", timeout=300)
    assert done.returncode != 0, done.stdout[-2000:]
    assert "not the search space's" in done.stderr + done.stdout, done.stderr[-2000:]
    assert not list(tmp_path.glob("jobs/*/info.json"))
    assert not Path("/tmp/brevpipe-planted").exists()


def test_a_resumed_trial_is_not_judged_again_on_the_epochs_it_replays(tmp_path: Path) -> None:
    from brevpipe.integrations.pruning import TrialReporter
    from brevpipe.jobs.control import TrialPruned

    study = optuna.create_study(storage=open_storage(str(tmp_path / "j")), direction="minimize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    for step in (1, 2):
        good.report(0.1, step)
    study.tell(good, 0.1)
    lagging = study.ask()
    lagging.report(5.0, 1)  # the epoch a killed job had reported
    reporter = TrialReporter(study, lagging._trial_id, lagging.number, "val_loss", {1})
    reporter.on_metrics({"val_loss": 5.0}, 1)  # replayed on resume: not judged again
    with pytest.raises(TrialPruned, match="pruned after epoch 2"):
        reporter.on_metrics({"val_loss": 4.0}, 2)


def test_a_journal_object_that_is_not_a_batch_is_skipped_by_every_reader(tmp_path: Path) -> None:
    url = str(tmp_path / "j")
    FsspecJournal(url).append_logs([{"op_code": 0, "worker_id": "w", "study_name": "a"}])
    (tmp_path / "j" / "0000000001.json").write_text("[" * 100_000)  # planted: deep, not JSON
    (tmp_path / "j" / "0000000002.json").write_text('[{"op_code": 99, "worker_id": "w"}]')
    FsspecJournal(url).append_logs([{"op_code": 1, "worker_id": "w", "study_id": 0}])
    first, second = FsspecJournal(url).read_logs(0), FsspecJournal(url).read_logs(0)
    assert first == second and [e["op_code"] for e in first] == [0, 1]


def test_a_resumed_sweep_draws_new_suggestions_and_secrets_stay_out_of_records() -> None:
    from brevpipe.config.compose import redact
    from brevpipe.integrations.optuna_sweep import OptunaSweep, overrides, search_space

    sweep = OptunaSweep({"_target_": "optuna.samplers.RandomSampler", "seed": 7}, "maximize",
                        None, 4, 1, 0.0, None)  # fmt: skip
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    first = [optuna.create_study(sampler=sweep.sampler(n)).ask(space).params["x"]
             for n in (0, 0, 3)]  # fmt: skip
    assert first[0] == first[1] != first[2]  # seeded; a resumed study's sampler goes on
    space, fixed = search_space({"x": "choice('d,e',[1,2],abc)"}, ["~y", "z=interval(0,1)"])
    assert space["x"].choices == ("d\\,e", "[1,2]", "abc") and fixed == {"~y": "~y"}
    assert overrides({"x": "d\\,e", "z": 0.5}, fixed) == ["x=d\\,e", "z=0.5", "~y"]
    assert redact({"search": {"storage": "postgresql://user:pw@db/optuna"}}) == {
        "search": {"storage": "postgresql://user:***@db/optuna"}}


def test_s3_answers_that_mean_taken_are_told_from_other_errors() -> None:
    """What s3fs makes of S3's answers to an exclusive write (botocore's own errors)."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    from brevpipe.integrations.optuna_storage import taken

    def answer(status: int, code: str, condition: str | None = None) -> OSError:
        error = {"Code": code, "Message": code, **({"Condition": condition} if condition else {})}
        return translate_boto_error(ClientError(
            {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"))

    assert taken(answer(412, "PreconditionFailed", "If-None-Match"))  # AWS: it exists
    assert taken(answer(409, "ConditionalRequestConflict"))  # AWS: another write in flight
    assert taken(answer(412, "PreconditionFailed"))  # a store that names no condition
    assert not taken(answer(403, "AccessDenied")) and not taken(answer(500, "InternalError"))


def test_a_grid_sweep_with_a_url_password_runs_its_trials(tmp_path: Path) -> None:
    """The record keeps the redacted URL; each trial compares its own, redacted the same way."""
    from omegaconf import OmegaConf

    from brevpipe.engine.rerun import redacted_url
    from brevpipe.integrations.sweep import check_same_sweep, record_url

    config = OmegaConf.create({"job": {"root": str(tmp_path / "jobs")}})
    hydra = OmegaConf.create({"runtime": {"cwd": str(tmp_path)}, "sweep": {"dir": "multirun/x"},
                              "overrides": {"task": ["seed=1", "+x=http://u:pw@h/db"]}})
    url = record_url(config, hydra)
    Path(url).parent.mkdir(parents=True)
    Path(url).write_text(json.dumps({"sweep_id": "x", "overrides": ["seed=1,2",
                                                                    "+x=http://u:***@h/db"]}))
    check_same_sweep(config, hydra)  # the same sweep: no refusal
    assert redacted_url("http://u:***@h/db") and not redacted_url("http://h/db")


def test_a_trial_that_fails_is_told_failed_and_stops_the_sweep_by_its_failure_rate(
    tmp_path: Path
) -> None:
    done = run_sweep(tmp_path, "search=lr_dense", "hydra.sweeper.n_trials=3",
                     "job.tags=[not/a/tag]", timeout=300)  # a ConfigError when the job starts
    assert done.returncode != 0
    assert "1 of 1 trials failed, more than hydra.sweeper.max_failure_rate=0" in \
        done.stdout + done.stderr, done.stderr[-2000:]  # fmt: skip
    journal = next((tmp_path / "jobs" / "sweeps").glob("*.optuna"))
    assert [t.state for t in study_of(str(journal)).trials] == [TrialState.FAIL]
