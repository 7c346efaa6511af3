"""Every ``python -m`` command of README.md parses as shown; ``--help`` ones run."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
#: Modules of this project whose commands the README shows (others: pip, pytest).
PROJECT_MODULES = ("pipelines.", "benchmarks.")


def readme_commands() -> list[list[str]]:
    """The distinct ``python -m`` commands of the README's bash blocks, as argument lists."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    commands = []
    for line in "\n".join(blocks).splitlines():
        words = shlex.split(line, comments=True)
        if (words[:2] == ["python", "-m"] and words[2].startswith(PROJECT_MODULES)
                and words[2:] not in commands):
            commands.append(words[2:])
    return commands


def test_the_readme_shows_the_main_commands() -> None:
    modules = {command[0] for command in readme_commands()}
    assert {"pipelines.run", "pipelines.predict", "benchmarks.run"} <= modules
    assert ["pipelines.run", "--model", "stack", "--out", "runs/stack"] in readme_commands()


@pytest.mark.parametrize("command", readme_commands(), ids=" ".join)
def test_readme_command_parses(command: list[str], capsys) -> None:
    module, *argv = command
    parser = importlib.import_module(module).build_parser()
    if "--help" in argv:
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 0
        assert "usage: python -m" in capsys.readouterr().out
        return
    parser.parse_args(argv)    # an unknown option or a bad value exits with status 2
