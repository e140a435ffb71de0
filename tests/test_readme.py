"""The README's commands cannot rot: CI runs the shell blocks, this runs the Python ones."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_python_blocks_run(capsys):
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), {})
    assert "torch.Size" in capsys.readouterr().out


def test_ci_runs_the_readme_setup_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    setup, tests = (b.strip() for b in blocks("bash")[:2])
    assert setup in ci and tests in ci
