"""The house rule, read from the code: which layer of vizcnn may import which.

Arrows point down only (docs/ARCHITECTURE.md):

    cli  →  writers  →  api  →  methods  →  models  →  io  →  core
         ↘  study    ↘  render (results in, figures out)

Every ``import`` and ``from … import`` under vizcnn/ is parsed (function bodies
included); imports under ``if TYPE_CHECKING:`` are annotations only and are not counted.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vizcnn"

#: layer -> the layers it may import (itself included)
ALLOWED = {
    "core": {"core"},
    "io": {"core", "io"},
    "models": {"core", "io", "models"},
    "methods": {"core", "models", "methods"},
    "render": {"core", "render", "methods", "io.opencv"},
    "api": {"core", "io", "models", "methods"},
    "writers": {"core", "io", "models", "methods", "render", "api", "writers"},
    # the ZFNet study is a wing of its own: it trains, measures, draws and writes, so it
    # stands beside the writers and uses every floor below them
    "study": {"core", "io", "models", "methods", "render", "api", "study"},
    "top": {"core", "io", "models", "methods", "render", "api", "writers", "study"},
}


def _layer(module: str) -> str:
    """vizcnn.methods.scan -> methods; vizcnn.io.opencv -> io; vizcnn.api -> api; vizcnn -> top."""
    parts = module.split(".")[1:]
    return parts[0] if parts else "top"


def _type_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside ``if TYPE_CHECKING:`` blocks."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for inner in node.body:
                lines.update(range(inner.lineno, inner.end_lineno + 1))
    return lines


def _imports() -> list[tuple[str, str, int, tuple[str, ...]]]:
    """(importing module, imported module, line, names) for every import under vizcnn/."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_only(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                found += [(module, a.name, node.lineno, ()) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found.append((module, target, node.lineno, tuple(a.name for a in node.names)))
    return found


IMPORTS = _imports()


def test_the_layers_are_there():
    for layer in ("core", "io", "models", "methods", "render", "writers"):
        assert (ROOT / layer / "__init__.py").is_file(), layer


def test_nothing_under_vizcnn_imports_the_cli():
    bad = [f"{m}:{line} imports {t}" for m, t, line, _ in IMPORTS if t == "cli" or t.startswith("cli.")]
    assert not bad, bad


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down_only(layer):
    bad = []
    for module, target, line, _ in IMPORTS:
        if _layer(module) != layer or not target.startswith("vizcnn.") and target != "vizcnn":
            continue
        if module == target.rpartition(".")[0] or target == module:
            continue  # a package's own face
        to = _layer(target)
        allowed = ALLOWED[layer]
        if to not in allowed and ".".join(target.split(".")[1:3]) not in allowed:
            bad.append(f"{module}:{line} imports {target}")
    assert not bad, f"{layer} may import only {sorted(ALLOWED[layer])}: " + "; ".join(bad)


def test_methods_never_read_draw_or_write():
    """The analyses take tensors (and callables that read) and return results."""
    heavy = ("cv2", "matplotlib", "vizcnn.io", "vizcnn.render", "vizcnn.writers")
    bad = [f"{m}:{line} imports {t}" for m, t, line, _ in IMPORTS
           if _layer(m) == "methods" and any(t == h or t.startswith(h + ".") for h in heavy)]
    assert not bad, bad


def test_render_takes_only_types_and_constants_from_methods():
    """Rendering never computes: from vizcnn.methods it imports result classes and
    constants (CamelCase or UPPER_CASE names), no functions."""
    bad = [f"{m}:{line} imports {n} from {t}" for m, t, line, names in IMPORTS
           if _layer(m) == "render" and t.startswith("vizcnn.methods") for n in names
           if not (n[:1].isupper())]
    assert not bad, bad


def test_opencv_is_imported_in_one_place():
    bad = [f"{m}:{line}" for m, t, line, _ in IMPORTS if t.split(".")[0] == "cv2" and m != "vizcnn.io.opencv"]
    assert not bad, bad
