"""The package's layering: no import cycle, and no module importing one of a higher layer.

The import graph is read from the source with :mod:`ast` (every ``import`` / ``from ... import``,
at module level or inside a function alike): ``rtpanoptic/`` and ``kernels/`` (installed as
``rtpanoptic.kernels``).  An edge goes to the module named, or to the submodule when a name
imported from a package is one (``from . import ops``).  Imports made by name at run time
(``importlib.import_module("rtpanoptic.kernels")`` in the ops' registry) are not edges: that is
how the ops find their optional backends.

Run ``python tests/test_layering.py`` to print the graph's cycles and upward imports.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first.  A module belongs to the layer of its longest matching prefix (the root package
# ``rtpanoptic`` names its ``__init__`` only); a module may import its own layer or lower ones, never a
# higher one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # the compiled extension, one-line user errors, how files are written and deleted, typed configs,
    # DDP process groups
    ("base", ("rtpanoptic._extension", "rtpanoptic.usage", "rtpanoptic.safe_io", "rtpanoptic.config",
              "rtpanoptic.distributed")),
    # the ops and their registry; ``rtpanoptic/__init__`` only holds the version and registers the ops
    ("ops", ("rtpanoptic", "rtpanoptic.ops")),
    # Triton backends: they read the ops' registry, the registry finds them by name at run time
    ("kernels", ("rtpanoptic.kernels",)),
    # datasets, their descriptions and the panoptic file format
    ("data", ("rtpanoptic.data",)),
    # geometry of dense detections shared by training and inference
    ("dense", ("rtpanoptic.candidates", "rtpanoptic.targets")),
    # weight files read and loaded into a network (below the presets that load them)
    ("weights", ("rtpanoptic.weights",)),
    ("model", ("rtpanoptic.model",)),
    ("losses", ("rtpanoptic.losses",)),
    ("evaluation", ("rtpanoptic.evaluation",)),
    # running the network (precision, int8, torch.compile, CUDA graphs), image batches, frame streams
    ("execution", ("rtpanoptic.execution", "rtpanoptic.quantize", "rtpanoptic.images", "rtpanoptic.stream")),
    # images in, panoptic results out, and what writes or exports them
    ("inference", ("rtpanoptic.inference", "rtpanoptic.export", "rtpanoptic.viz")),
    ("engine", ("rtpanoptic.engine",)),
    # jobs built on inference and training
    ("tools", ("rtpanoptic.benchmark", "rtpanoptic.video", "rtpanoptic.report")),
    ("pipeline", ("rtpanoptic.pipeline",)),
    ("demo", ("rtpanoptic.demo",)),
    ("cli", ("rtpanoptic.cli", "rtpanoptic.__main__")),
)


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package)}`` of every module of the installed package."""
    mods: dict[str, tuple[Path, bool]] = {}
    for path in sorted((ROOT / "rtpanoptic").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("").parts
        if len(rel) > 1 and rel[1] == "kernels":  # a symlink to kernels/, read below
            continue
        pkg = rel[-1] == "__init__"
        mods[".".join(rel[:-1] if pkg else rel)] = (path, pkg)
    for path in sorted((ROOT / "kernels").glob("*.py")):
        pkg = path.stem == "__init__"
        mods["rtpanoptic.kernels" + ("" if pkg else f".{path.stem}")] = (path, pkg)
    return mods


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over the package's own modules."""
    mods = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, (path, pkg) in mods.items():
        edges: dict[str, int] = {}
        here = name.split(".") if pkg else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the layer holding ``module`` (longest matching prefix)."""
    best, index = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or (p != "rtpanoptic" and module.startswith(p + "."))) and len(p) > best:
                best, index = len(p), i
    if index < 0:
        raise KeyError(f"{module} is in no layer of tests/test_layering.py: add it to LAYERS")
    return index


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """``"module:line -> imported (layer -> higher layer)"`` for every import of a higher layer."""
    out = []
    for name in sorted(graph):
        for target, line in sorted(graph[name].items()):
            a, b = layer_of(name), layer_of(target)
            if b > a:
                out.append(f"{name}:{line} -> {target} ({LAYERS[a][0]} -> {LAYERS[b][0]})")
    return out


def test_every_module_has_a_layer():
    for name in import_graph():
        layer_of(name)
    with pytest.raises(KeyError, match="rtpanoptic.newcomer is in no layer"):
        layer_of("rtpanoptic.newcomer")


def test_the_graph_reads_relative_imports():
    # Guards the reader itself: edges it must find in today's code.
    graph = import_graph()
    assert "rtpanoptic.ops" in graph["rtpanoptic"]                 # from . import ops
    assert "rtpanoptic.ops.grid" in graph["rtpanoptic.targets"]    # from .ops.grid import ...
    assert "rtpanoptic.ops.registry" in graph["rtpanoptic.kernels._common"]  # absolute, in kernels/
    assert "rtpanoptic.model.config" in graph["rtpanoptic.model.network"]    # from .config import ...


def test_the_checks_can_fail():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert upward_imports({"rtpanoptic.ops.boxes": {"rtpanoptic.cli": 7}, "rtpanoptic.cli": {}}) == [
        "rtpanoptic.ops.boxes:7 -> rtpanoptic.cli (ops -> cli)"]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_upward_import():
    assert upward_imports(import_graph()) == []


if __name__ == "__main__":
    g = import_graph()
    found = cycles(g)
    print(f"{len(found)} cycle(s)")
    for c in found:
        print("  " + " <-> ".join(c))
    up = upward_imports(g)
    print(f"{len(up)} upward import(s)")
    for u in up:
        print("  " + u)
