"""The command line: help, Hydra flags, clear config errors, and no heavy imports."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("tensorflow", "keras", "mlflow")


def brevpipe(
    *args: str, cwd: Path | None = None, timeout: int = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brevpipe", *args],
        capture_output=True, text=True, cwd=cwd, timeout=timeout,
    )  # fmt: skip


def imported_after(args: list[str], cwd: Path) -> tuple[int, dict[str, bool]]:
    """Run ``brevpipe ARGS`` in a fresh interpreter; report its exit code and heavy imports."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from brevpipe.commands.cli import main
        try:
            rc = main({args!r})
        except SystemExit as exc:
            rc = exc.code
        print("@@" + json.dumps({{"rc": rc, "mods": {{m: m in sys.modules for m in {HEAVY!r}}}}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("@@"))
    result = json.loads(line[2:])
    return result["rc"] or 0, result["mods"]


def test_help_lists_subcommands() -> None:
    out = brevpipe("--help")
    assert out.returncode == 0
    assert "run [overrides...]" in out.stdout
    assert "rerun URL [overrides...]" in out.stdout
    assert "brevpipe run -m" in out.stdout


def test_run_help_lists_the_groups_a_user_picks_and_the_flags(tmp_path: Path) -> None:
    out = brevpipe("run", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("brevpipe run: ")
    assert "model: efficientnet_b0, mobilenet_v2, resnet50, segmentation, small_cnn" in lines
    assert "tracking: mlflow, none" in lines
    assert not [line for line in lines if line.startswith("schema/")], "typed settings' groups"
    assert any(line.startswith("--cfg,-c") for line in lines), "Hydra's flags"
    assert "brevpipe schema [GROUP[=OPTION]]" in out.stdout


def test_every_command_of_the_table_is_a_module_with_main_and_help_names_it() -> None:
    from brevpipe.commands import cli

    text = cli.usage()
    for command in cli.COMMANDS:
        module = importlib.import_module(command.module)
        assert callable(module.main), command.name
        assert f"  {command.name} {command.arguments}" in text
    files = {p.stem for p in Path(cli.__file__).parent.glob("*.py")}
    helpers = {"__init__", "cli", "common", "job_tables"}
    assert files - helpers == {c.name for c in cli.COMMANDS}, "one module per command"


def complete(line: str, tmp_path: Path) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end): the script of ``brevpipe
    completion bash`` loaded into a bash, its function called as the shell calls it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    launcher = bin_dir / "brevpipe"  # the console script as the shell finds it on PATH
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m brevpipe "$@"\n')
    launcher.chmod(0o755)
    script = brevpipe("completion", "bash").stdout
    driver = textwrap.dedent(
        """
        COMP_WORDS=($COMP_LINE)
        [[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
        COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
        COMP_POINT=${#COMP_LINE}
        _brevpipe_complete
        printf '%s\\n' "${COMPREPLY[@]}"
        """
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COMP_LINE": line}
    out = subprocess.run(["bash", "-c", script + driver], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "_brevpipe_complete" in script
    return [w for w in out.stdout.splitlines() if w]


def test_bash_completes_commands_flags_groups_options_and_keys(tmp_path: Path) -> None:
    from brevpipe.commands import cli

    assert complete("brevpipe re", tmp_path) == ["rerun"]
    assert set(complete("brevpipe ", tmp_path)) == set(cli.BY_NAME)
    assert complete("brevpipe --", tmp_path) == ["--help", "--version"]
    assert complete("brevpipe jobs li", tmp_path) == ["list"]
    assert "--status" in complete("brevpipe jobs list --", tmp_path)
    assert complete("brevpipe jobs list --status fa", tmp_path) == ["failed"]
    assert complete("brevpipe cache ", tmp_path) == ["clear", "info"]
    # after run: Hydra's completion from the composed config, the schema/* groups left out
    assert complete("brevpipe run mod", tmp_path) == ["model.", "model="]  # its keys, options
    assert "model=small_cnn" in complete("brevpipe run model=", tmp_path)
    assert "trainer.epochs=" in complete("brevpipe run trainer.ep", tmp_path)
    assert not [w for w in complete("brevpipe run ", tmp_path) if w.startswith("schema/")]
    assert "--multirun" in complete("brevpipe run --mu", tmp_path)
    assert complete("brevpipe rerun out.json --allow", tmp_path) == ["--allow-data-change"]
    assert "seed=" in complete("brevpipe rerun out.json se", tmp_path)


def test_completion_scripts_and_the_routes_hydra_gives(tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        out = brevpipe("completion", shell)
        assert out.returncode == 0 and "brevpipe __complete" in out.stdout, shell
    # `brevpipe run --shell-completion install=bash` (Hydra's flag) gives brevpipe's script
    assert brevpipe("run", "-sc", "install=bash").stdout == brevpipe("completion", "bash").stdout
    # a script from Hydra's own install asks `brevpipe -sc query=bash` with COMP_LINE set
    env = {**os.environ, "COMP_LINE": "brevpipe run tracking="}
    out = subprocess.run([sys.executable, "-m", "brevpipe", "-sc", "query=bash"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert out.stdout.split() == ["tracking=mlflow", "tracking=none"]
    bad = brevpipe("completion", "tcsh")
    assert bad.returncode == 2 and "bash|zsh|fish" in bad.stderr


def test_console_script_matches_python_m() -> None:
    script = Path(sys.executable).with_name("brevpipe")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout == brevpipe("--help").stdout


def test_unknown_command_is_a_clear_error() -> None:
    out = brevpipe("train")
    assert out.returncode == 2
    assert "unknown command 'train'" in out.stderr


@pytest.mark.parametrize(
    ("args", "expect_rc"),
    [
        (["--help"], 0),
        (["run", "--help"], 0),
        (["run", "--cfg", "job"], 0),
        (["run", "--info"], 0),
        (["run", "nonexistent_key=1"], 1),
        (["run", "model=no_such_model"], 1),
        (["run", "dataset=folder", "tracking=none"], 1),  # dataset.url missing
        (["rerun", "--help"], 0),
        (["rerun", "no/such/output.json"], 1),
    ],
)
def test_no_tensorflow_or_mlflow_for_help_and_config_errors(
    args: list[str], expect_rc: int, tmp_path: Path
) -> None:
    rc, modules = imported_after(args, tmp_path)
    assert rc == expect_rc
    assert modules == dict.fromkeys(HEAVY, False)


def test_unknown_override_prints_hydras_message(tmp_path: Path) -> None:
    out = brevpipe("run", "trainer.epochz=3", cwd=tmp_path)
    assert out.returncode != 0
    assert "Could not override 'trainer.epochz'" in out.stderr


def test_unknown_group_option_lists_the_options(tmp_path: Path) -> None:
    out = brevpipe("run", "model=resnet9000", cwd=tmp_path)
    assert out.returncode != 0
    assert "Could not find 'model/resnet9000'" in out.stderr
    assert "small_cnn" in out.stderr
    helped = brevpipe("run", "--help", "model=resnet9000", cwd=tmp_path)  # the same, no traceback
    assert helped.returncode == 1 and "Traceback" not in helped.stderr
    assert "Could not find 'model/resnet9000'" in helped.stderr and "small_cnn" in helped.stderr


def test_missing_dataset_url_is_one_clear_line(tmp_path: Path) -> None:
    out = brevpipe("run", "dataset=folder", "tracking=none", f"job.root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 1
    assert "dataset.url is required" in out.stderr
    assert "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir()), "a config error must not create a job bucket"


def test_cfg_job_shows_the_composed_pipeline(tmp_path: Path) -> None:
    out = brevpipe("run", "--cfg", "job", "seed=7", "model.dense=32", cwd=tmp_path)
    assert out.returncode == 0
    assert "seed: 7" in out.stdout
    assert "_target_: stage:classification.train" in out.stdout  # public names, not paths
    assert "dense: 32" in out.stdout


QUIET_IMPORT = """
import os, sys, threading, time
from brevpipe.engine.tensorflow_import import import_tensorflow
def planted():  # another thread that writes to stderr while TensorFlow loads
    time.sleep(0.5)
    os.write(2, b"planted line from another thread\\n")
threading.Thread(target=planted).start()
import_tensorflow(notices=sys.argv[1] == "notices")
import tensorflow, keras
print(tensorflow.constant(2).numpy() * 21)
"""


def test_tensorflow_loads_without_its_start_up_notices_and_other_stderr_stays() -> None:
    """TensorFlow's absl notices (oneDNN, CPU instructions; twice per import) stay off the
    console; what anything else writes to stderr meanwhile is kept, in order."""
    from brevpipe.engine.tensorflow_import import NOTICES

    def run(mode: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        done = subprocess.run([sys.executable, "-c", QUIET_IMPORT, mode], env=env,
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        assert done.returncode == 0 and done.stdout.strip() == "42", done.stderr[-2000:]
        return done

    quiet, verbose = run("quiet"), run("notices")
    assert "planted line from another thread" in quiet.stderr
    assert not [n for n in NOTICES if n in quiet.stderr], quiet.stderr
    assert "planted line from another thread" in verbose.stderr


@pytest.mark.parametrize("other_thread", [False, True])
def test_console_main_skips_the_teardown_only_when_nothing_else_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, other_thread: bool
) -> None:
    """Once TensorFlow is loaded, the command's exit handlers run, logging and output are
    flushed and the process ends at once (os._exit, with the command's code); a thread that
    still works keeps Python's usual exit, which waits for it."""
    import threading
    import types

    from brevpipe import __version__
    from brevpipe.commands import cli

    class Exited(Exception):
        pass

    calls: list[tuple] = []

    def exit_now(code: int) -> None:
        calls.append(("exit", code))
        raise Exited

    monkeypatch.setattr(cli.os, "_exit", exit_now)
    monkeypatch.setattr(cli.atexit, "_run_exitfuncs", lambda: calls.append(("handlers",)))
    monkeypatch.setattr(cli.logging, "shutdown", lambda: calls.append(("logging",)))
    loaded = sys.modules.get("tensorflow") or types.ModuleType("tensorflow")
    monkeypatch.setitem(sys.modules, "tensorflow", loaded)
    monkeypatch.setattr(sys, "argv", ["brevpipe", "--version"])
    if not other_thread:  # this test process's own threads (earlier tests') left out
        monkeypatch.setattr(cli.threading, "enumerate", lambda: [threading.main_thread()])
        with pytest.raises(Exited):
            cli.console_main()
        assert calls == [("handlers",), ("logging",), ("exit", 0)]
    else:
        release = threading.Event()
        working = threading.Thread(target=release.wait)
        working.start()
        try:
            with pytest.raises(SystemExit) as ended:
                cli.console_main()
        finally:
            release.set()
            working.join()
        assert ended.value.code == 0 and calls == []
    assert capsys.readouterr().out == f"{__version__}\n"
