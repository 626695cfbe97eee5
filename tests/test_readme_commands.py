"""Every shell command in the README's code blocks exists and takes the options it is shown with.

Each command runs in a cheap form: ``make X`` as a dry run (``make -n X``), ``wise-plugin <sub> ...``
and ``python <script> ...`` with ``--help``, whose text must name every option the README passes.
A command of any other kind fails the test, so the README cannot drift into commands nobody checks.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

README = os.path.join(ROOT, "README.md")
BIN = os.path.dirname(sys.executable)
_FENCE = re.compile(r"^```(\w*)\s*$")


def readme_commands(path: str = README) -> list[str]:
    """Shell commands of the README's ``bash``/``sh``/``shell`` blocks (continuations joined, comments dropped)."""
    commands, block, pending = [], None, ""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fence = _FENCE.match(line.strip())
            if fence:
                block = None if block is not None else fence.group(1)
                continue
            if block not in ("bash", "sh", "shell"):
                continue
            text = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            text = (pending + text).strip()
            pending = ""
            if text:
                commands.append(text)
    return commands


def cheap_form(command: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(argv to run, options the help text must name, extra environment) for one README command."""
    words = shlex.split(command)
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words, f"README command {command!r} is only variable assignments"
    program = words[0]
    options = [w.split("=", 1)[0] for w in words[1:] if w.startswith("--")]
    if program == "make":
        return ["make", "-n", *words[1:]], [], env
    name = os.path.basename(program)
    if name == "wise-plugin":
        sub = [w for w in words[1:2] if not w.startswith("-")]
        return [os.path.join(BIN, "wise-plugin"), *sub, "--help"], options, env
    if re.fullmatch(r"python(3(\.\d+)?)?", name):
        script = words[1]
        assert os.path.isfile(os.path.join(ROOT, script)), f"README command {command!r}: {script} does not exist"
        return [sys.executable, script, "--help"], options, env
    raise AssertionError(f"README command {command!r}: not a kind this test can check (make, wise-plugin, python "
                         "<script>); show it as prose or extend tests/test_readme_commands.py")


def test_the_readme_shows_commands():
    commands = readme_commands()
    assert any(c.startswith("make test") for c in commands) and any("wise-plugin" in c for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_in_a_cheap_form(command):
    argv, options, env = cheap_form(command)
    env = {**os.environ, **{k: v for k, v in env.items() if k != "PYTHONPATH"}}
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
    missing = [option for option in options if option not in result.stdout]
    assert not missing, f"README command {command!r} passes {missing}, which `{' '.join(argv)}` does not list"
