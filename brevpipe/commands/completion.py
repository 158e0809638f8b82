"""``brevpipe completion bash|zsh|fish``: tab completion for the shell.

The shell's script asks ``brevpipe __complete`` for the words that can follow the line typed so
far (``COMP_LINE``, up to ``COMP_POINT``): the commands of the commands table, each command's
flags and subcommands (from its argparse parser), and after ``run``/``rerun`` every config group,
option and key, which Hydra's own completion answers from the composed config.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys
from collections.abc import Sequence
from typing import Protocol

from brevpipe.config.compose import CONF_DIR

USAGE = """\
usage: brevpipe completion bash|zsh|fish

Print the script that makes the shell complete brevpipe's commands, flags, config groups,
options and keys. Load it now, or add the line to your shell's start-up file:
  bash:  eval "$(brevpipe completion bash)"        (~/.bashrc)
  zsh:   eval "$(brevpipe completion zsh)"         (~/.zshrc)
  fish:  brevpipe completion fish | source         (~/.config/fish/config.fish)
"""

# As Hydra's own script does: ``model=small_cnn`` stays one word for bash (not three).
BASH = """\
_brevpipe_complete()
{
    local IFS=$'\\n'
    COMPREPLY=($(COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" brevpipe __complete 2>/dev/null))
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _brevpipe_complete brevpipe
"""
ZSH = "autoload -U +X bashcompinit && bashcompinit\n" + BASH
FISH = """\
function __brevpipe_complete
    set -l line (commandline -cp)
    env COMP_LINE="$line" COMP_POINT=(string length -- "$line") brevpipe __complete 2>/dev/null
end
complete -c brevpipe -f -a '(__brevpipe_complete)'
"""
SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}


class Command(Protocol):  # a row of brevpipe.commands.cli.COMMANDS
    name: str
    module: str


# Hydra's flags of ``brevpipe run`` (what ``brevpipe run --help`` lists)
RUN_FLAGS = ("--help", "--hydra-help", "--version", "--cfg", "--resolve", "--package",
             "--info", "--multirun", "--config-dir", "--config-name", "--config-path",
             "--shell-completion", "--run", "--experimental-rerun")  # fmt: skip
RERUN_FLAGS = ("--allow-data-change", "--help")


def main(args: list[str]) -> int:
    asked = bool(args) and args[0] in ("-h", "--help")
    if len(args) != 1 or args[0] not in SCRIPTS:
        print(USAGE, end="", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    print(SCRIPTS[args[0]], end="")
    return 0


def complete_from_environment(commands: Sequence[Command]) -> int:
    """``brevpipe __complete``: one candidate a line for ``$COMP_LINE`` up to ``$COMP_POINT``."""
    for candidate in candidates(typed_line(), commands):
        print(candidate)
    return 0


def hydra_query(args: list[str], commands: Sequence[Command]) -> int:
    """``brevpipe -sc query=bash`` (what a script from Hydra's ``-sc install=bash`` asks)
    answers as Hydra does, space-separated; ``-sc install=SHELL`` prints brevpipe's script."""
    what, _, shell = (args[0] if args else "").partition("=")
    if what == "install" and shell in SCRIPTS:
        return main([shell])
    if what != "query":
        print(USAGE, end="", file=sys.stderr)
        return 2
    print(" ".join(candidates(typed_line(), commands)))
    return 0


def typed_line() -> str:
    """``$COMP_LINE`` up to the cursor (``$COMP_POINT``; the whole line when that is unset or
    not a number)."""
    line = os.environ.get("COMP_LINE", "")
    point = os.environ.get("COMP_POINT", "")
    return line[: int(point)] if point.isdigit() else line


def candidates(line: str, commands: Sequence[Command]) -> list[str]:
    """What can replace the last word of ``line`` (``brevpipe ...`` as typed so far), for
    these ``commands``."""
    words = line.split()
    if not line or line[-1].isspace():
        words.append("")  # a new word
    *before, word = words[1:] if len(words) > 1 else [""]
    if not before:
        flags = ["--help", "--version"] if word.startswith("-") else []
        return matching(word, [c.name for c in commands] + flags)
    command = before[0]
    if command == "completion":
        return matching(word, list(SCRIPTS)) if len(before) == 1 else []
    if command in ("run", "rerun"):
        return _config_words(command, before[1:], word)
    row = next((c for c in commands if c.name == command), None)
    if row is None:
        return []
    module = importlib.import_module(row.module)
    build = getattr(module, "build_parser", None)
    return _parser_words(build(), before[1:], word) if build else []


def matching(word: str, options: list[str]) -> list[str]:
    return sorted({o for o in options if o.startswith(word)})


def _parser_words(parser: argparse.ArgumentParser, before: list[str], word: str) -> list[str]:
    """Subcommands and choices of an argparse ``parser`` (into a subcommand typed in
    ``before``), its flags once the word starts with ``-``; a flag's choices after it."""
    words: list[str] = []
    for action in parser._actions:  # argparse has no public walk of its arguments
        if isinstance(action, argparse._SubParsersAction):
            typed = next((w for w in before if w in action.choices), None)
            if typed:
                at = before.index(typed)
                return _parser_words(action.choices[typed], before[at + 1 :], word)
            words += list(action.choices)
        elif before and before[-1] in action.option_strings:
            return matching(word, [str(c) for c in action.choices or ()])
        elif action.option_strings:
            if word.startswith("-"):
                words += [o for o in action.option_strings if o.startswith("--")]
        elif action.choices:
            words += [str(c) for c in action.choices]
    return matching(word, words)


def _config_words(command: str, before: list[str], word: str) -> list[str]:
    """After ``run`` (or ``rerun URL``): Hydra's completion of groups, options and keys."""
    if word.startswith("-"):
        return matching(word, list(RUN_FLAGS if command == "run" else RERUN_FLAGS))
    overrides = [w for w in before if not w.startswith("-")]
    if command == "rerun":
        if not overrides:
            return []  # the URL: the shell completes file names
        overrides = overrides[1:]
    config_dir = []
    for flag in ("--config-dir", "-cd"):
        if flag in before[:-1]:
            config_dir = [flag, before[before.index(flag) + 1]]
    return [w for w in hydra_completion(overrides, word, config_dir)
            if not w.startswith("schema/")]  # the typed settings: not picked by users


def hydra_completion(overrides: list[str], word: str, config_dir: list[str]) -> list[str]:
    """Hydra's answer to ``-sc query=bash`` for brevpipe's config (its public route)."""
    import hydra

    main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    saved = sys.argv, os.environ.get("COMP_LINE")
    sys.argv = ["brevpipe", *config_dir, "-sc", "query=bash"]
    os.environ["COMP_LINE"] = " ".join(["brevpipe", *overrides, word])
    answer = io.StringIO()
    try:
        with contextlib.redirect_stdout(answer), contextlib.suppress(SystemExit):
            main(lambda cfg: None)()
    finally:
        sys.argv = saved[0]
        if saved[1] is None:
            os.environ.pop("COMP_LINE", None)
        else:
            os.environ["COMP_LINE"] = saved[1]
    return answer.getvalue().split()
