"""The README's commands cannot rot: CI runs the two set-up blocks, this runs the rest."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def console_commands() -> list[str]:
    return [line[2:].strip() for block in blocks("console") for line in block.splitlines() if line.startswith("$ ")]


def test_python_blocks_run(capsys, tmp_path, monkeypatch):
    """Every Python block, in a fresh folder that has the samples: the figures the
    drawing example saves are written there."""
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    monkeypatch.chdir(tmp_path)
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), {})
    assert "torch.Size" in capsys.readouterr().out
    saved = re.findall(r'save_figure\(.*"([\w./-]+\.png)"\)', README)
    assert saved, "the README shows how to save a figure"
    for name in saved:
        assert name.startswith("vizcnn-out/"), f"{name}: README examples write under vizcnn-out/ (.gitignore)"
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_ci_runs_the_readme_setup_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    setup, tests = (b.strip() for b in blocks("bash")[:2])
    assert setup in ci and tests in ci


@pytest.mark.parametrize("command", console_commands())
def test_console_commands_run(command, tmp_path, monkeypatch):
    """Every `$ vizcnn ...` line in the README, run from the repository root with its
    output folder moved under tmp_path."""
    args = shlex.split(command)
    assert args[0] == "vizcnn", command
    args = args[1:]
    if "--out" in args:
        i = args.index("--out") + 1
        assert args[i].startswith("vizcnn-out/"), f"{command}: README examples write under vizcnn-out/ (.gitignore)"
        args[i] = str(tmp_path / args[i])
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


def test_readme_images_exist():
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / target).is_file(), target
