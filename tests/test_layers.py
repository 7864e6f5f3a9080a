"""The layers point one way: common/ imports neither half, the trainer takes from the pipeline only the Beam-free
pipeline.mbeir, modeling imports nothing above it, and no shipped module imports itself back through others.
Every import statement counts, also those inside functions or under TYPE_CHECKING."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("common", "pipeline", "validators", "trainer", "prompts", "schemas")
ABOVE_MODELING = ("trainer.inference", "trainer.training", "trainer.benchmark", "trainer.release")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that a file imports (`from package import module` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
    return found & known


def import_graph(*packages: str) -> dict[str, set[str]]:
    files = {module_name(p): p for package in packages for p in sorted((ROOT / package).rglob("*.py"))}
    return {name: imports(path, set(files)) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import path that comes back to its start, per module found on a circle (depth-first search)."""
    found, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            found.append(path[path.index(name):] + [name])
            return
        if name in done:
            return
        for nxt in sorted(graph[name]):
            visit(nxt, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    return found


def test_modeling_imports_nothing_above_it():
    graph = import_graph("trainer")
    upward = {name: sorted(m for m in deps if m.startswith(ABOVE_MODELING))
              for name, deps in graph.items() if name.startswith("trainer.modeling")}
    assert not {k: v for k, v in upward.items() if v}


def test_no_import_circle_among_shipped_modules():
    assert cycles(import_graph(*SHIPPED)) == []


def test_common_imports_neither_half_and_the_trainer_only_the_mbeir_format():
    graph = import_graph(*SHIPPED)
    common = {n: sorted(d for d in deps if d.startswith(("pipeline", "trainer"))) for n, deps in graph.items()
              if n.startswith("common")}
    assert not {k: v for k, v in common.items() if v}
    trainer = {n: sorted(d for d in deps if d.startswith("pipeline") and not d.startswith("pipeline.mbeir"))
               for n, deps in graph.items() if n.startswith("trainer")}
    assert not {k: v for k, v in trainer.items() if v}


def test_the_check_sees_a_circle_and_a_nested_import(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    assert imports(tmp_path / "a.py", {"pkg.b"}) == {"pkg.b"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_trainer_imports_neither_beam_nor_openai():
    # Of the pipeline, the trainer may use only its Beam-free M-BEIR package (format, images, ids).
    code = ("import sys, trainer.training.cli, trainer.inference.api, trainer.training.data; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('apache_beam', 'openai') "
            "or (m.startswith('pipeline.') and not m.startswith('pipeline.mbeir'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)

