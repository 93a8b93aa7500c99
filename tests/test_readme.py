"""The README agrees with the code: set-up commands, the CLI command list and the exit codes."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from aiida_sqla_plugin.cli import EXIT_CODES, cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAIN_COMMAND = "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/aiida-sqla demo"


def _block(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->", README, re.S)
    assert match, f"README.md has no <!-- {marker} --> ... <!-- /{marker} --> block"
    return match.group(1)


def _command_after(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```", README)
    assert match, f"README.md has no command after <!-- {marker} -->"
    return match.group(1)


def _leaf_commands(command: click.Command, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(command, click.Group):
        return {leaf for name, sub in command.commands.items() for leaf in _leaf_commands(sub, (*path, name))}
    return {path}


def test_set_up_commands_are_the_documented_ones() -> None:
    assert _command_after("main-command") == MAIN_COMMAND
    assert _command_after("test-command") == "python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/pytest"


def test_readme_command_list_matches_the_cli() -> None:
    documented: set[tuple[str, ...]] = set()
    for line in _block("cli-commands").splitlines():
        match = re.match(r"\| `aiida-sqla ([^`]*)`", line)
        if not match:
            continue
        words = []
        for word in match.group(1).split():
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        documented.add(tuple(words))
    assert documented == _leaf_commands(cli)


def test_readme_exit_codes_match_the_cli() -> None:
    rows = re.findall(r"^\| (\d+) \| (.*) \|$", _block("exit-codes"), re.M)
    assert {int(code): meaning for code, meaning in rows} == EXIT_CODES


@pytest.mark.slow
def test_main_command_runs_in_a_fresh_copy(tmp_path: Path) -> None:
    """The README's main command, verbatim, in a copy of the repository with its own venv and directories."""
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis")
    shutil.copytree(ROOT, copy, ignore=ignore)
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["AIIDA_SQLA_CONFIG_DIR"] = str(tmp_path / "config")
    env["AIIDA_SQLA_DATA_DIR"] = str(tmp_path / "data")
    completed = subprocess.run(["bash", "-euo", "pipefail", "-c", MAIN_COMMAND], cwd=copy, env=env,
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Stored 10000 nodes" in completed.stdout
    assert "Ancestors of output" in completed.stdout and "(dry run, nothing deleted)" in completed.stdout
    assert (tmp_path / "data" / "demo.sqlite").is_file()
