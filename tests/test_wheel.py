"""A wheel that works: built from the sources alone, installed (not editable) into a
fresh virtual environment, and run from another folder — the README's quick start and
both of its Python snippets, verbatim, a learned LeNet-5 and DATA=samples need nothing
outside the installed package.

The fresh environment borrows this one's third-party packages (torch, torchvision, …)
through a path file, so nothing is downloaded; the editable install of the working tree
is not visible there (its finder is never loaded), so every vizcnn module, weight file
and sample image comes from the wheel.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args, cwd, env=None, timeout=120) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh environment's python, its site-packages) with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"  # only what a source distribution carries: no samples/, tests/ or build output
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("vizcnn", "cli"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", root / "dist", source, cwd=root, timeout=300)
    wheel, = (root / "dist").glob("vizcnn-*.whl")

    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root)
                .stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co., no vizcnn finder
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", site, wheel, cwd=root)
    return python, site


def _vizcnn(installed, *args, cwd):
    python, site = installed
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(VIZCNN_CACHE=str(cwd / "cache"), MPLBACKEND="Agg")
    main = "import sys; from importlib.metadata import entry_points; " \
           "sys.argv[0] = 'vizcnn'; " \
           "sys.exit(next(iter(entry_points(group='console_scripts', name='vizcnn'))).load()())"
    return _run(python, "-c", main, *args, cwd=cwd, env=env)


def test_the_wheel_carries_the_weights_and_samples(installed):
    _, site = installed
    package = site / "vizcnn"
    assert sorted(p.name for p in (package / "models" / "weights").glob("*.pt"))
    assert {"cat.jpg", "fashion-bag.png"} <= {p.name for p in (package / "samples").iterdir()}
    for layer in ("core", "io", "methods", "models", "render", "writers"):
        assert (package / layer / "__init__.py").is_file(), layer


def test_the_installed_package_runs_from_another_folder(installed, tmp_path):
    python, site = installed
    where = _run(python, "-c", "import vizcnn, cli; print(vizcnn.__file__); print(cli.__file__)", cwd=tmp_path)
    assert all(Path(line).resolve().is_relative_to(site.resolve()) for line in where.stdout.split()), where.stdout
    samples = site / "vizcnn" / "samples"

    # (the README's quick start: the test below) the learned LeNet-5, from an absolute path
    _vizcnn(installed, "deconv", "lenet5", samples / "fashion-bag.png", "--weights", "fashion-mnist",
            "--out", "lenet", cwd=tmp_path)
    assert (tmp_path / "lenet" / "summary.json").is_file()
    # DATA=samples: the images inside the package (no samples/ folder here)
    assert not (tmp_path / "samples").exists()
    _vizcnn(installed, "topk", "lenet5", "samples", "--weights", "fashion-mnist", "--layer", "c3", "--units", "0-1",
            "--out", "topk", cwd=tmp_path)
    summary = json.loads((tmp_path / "topk" / "summary.json").read_text())
    assert summary["data"] == "samples" and summary["images"] >= 5


def _readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_the_readme_quick_start_and_snippets_run_unchanged_from_the_wheel(installed, tmp_path):
    """The README's set-up line ends in the quick start; it and both Python snippets run as
    printed, in a folder with no samples/ (the shipped samples are found, and said so)."""
    python, site = installed
    setup = _readme_blocks("bash")[0].strip()
    quick = shlex.split(setup.rsplit("&& vizcnn ", 1)[1])
    assert quick[:2] == ["deconv", "alexnet"] and "samples/cat.jpg" in quick
    assert not (tmp_path / "samples").exists()
    done = _vizcnn(installed, *quick, cwd=tmp_path)
    assert f"reading the sample shipped with vizcnn: {site / 'vizcnn' / 'samples' / 'cat.jpg'}" in done.stderr
    out = tmp_path / quick[quick.index("--out") + 1]
    assert json.loads((out / "summary.json").read_text())["layers"]

    snippets = _readme_blocks("python")
    assert len(snippets) == 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(MPLBACKEND="Agg")
    outputs = []
    for i, code in enumerate(snippets):
        (tmp_path / f"snippet{i}.py").write_text(code)
        outputs.append(_run(python, f"snippet{i}.py", cwd=tmp_path, env=env, timeout=300))
    assert "torch.Size([1, 256, 13, 13])" in outputs[0].stdout  # the first prints conv5's shape
    assert "reading the sample shipped with vizcnn" in outputs[1].stderr
    saved = re.findall(r'save_figure\(.*"([\w./-]+\.png)"\)', snippets[1])
    assert saved and all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in saved), saved
