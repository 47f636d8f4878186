"""The package's import graph: no cycles, no private names across modules, layers that point one way
(data -> models -> objectives/methods/tasks -> loop -> recipes -> value -> cli)."""

import ast
from pathlib import Path

import lmvalue

PACKAGE = Path(lmvalue.__file__).parent

# Lower rank = lower layer. A module may import only modules of its own rank or lower.
LAYERS = [
    ("lmvalue", "lmvalue.errors", "lmvalue.files", "lmvalue.plotting", "lmvalue.dropout"),
    ("lmvalue.config", "lmvalue.data", "lmvalue.tokenizer", "lmvalue.attention"),
    ("lmvalue.weights", "lmvalue.checkpoint", "lmvalue.models"),
    ("lmvalue.objectives", "lmvalue.methods", "lmvalue.tasks"),
    ("lmvalue.loop", "lmvalue.inference", "lmvalue.transfer", "lmvalue.prompting", "lmvalue.generate"),
    ("lmvalue.pretrain", "lmvalue.finetune", "lmvalue.prompting.training"),
    ("lmvalue.continual", "lmvalue.value"),
    ("lmvalue.cli",),
]


def rank(module: str) -> int:
    best, best_len = None, -1
    for r, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = r, len(p)
    assert best is not None, f"{module} has no layer in tests/test_structure.py: add it to LAYERS"
    return best


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """module -> the lmvalue modules it imports (anywhere in it, functions included), and the private
    names (``_x``) imported from another module."""
    mods = modules()
    edges, private = {}, []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                if not base.startswith("lmvalue"):
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    target = full if full in mods else base
                    targets.add(target)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and target != name:
                        private.append((name, f"{base}.{alias.name}"))
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("lmvalue"))
        for target in list(targets):  # importing a.b.c runs a.b's __init__ first (unless we are in a.b)
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if not name.startswith(parent + "."):
                    targets.add(parent)
        edges[name] = {t for t in targets if t in mods and t != name}
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    edges, _ = import_graph()
    assert cycles(edges) == []


def test_no_private_names_across_modules():
    _, private = import_graph()
    assert private == []


# Known and still open (issue 23): the finetune config checks method names and capabilities against
# the method registry. Nothing may be added here.
KNOWN_UPWARD = {("lmvalue.config", "lmvalue.methods")}


def test_layers_point_one_way():
    edges, _ = import_graph()
    upward = sorted(
        (a, b)
        for a, targets in edges.items()
        for b in targets
        if rank(b) > rank(a) and not b.startswith(a + ".")  # a package may list its own plug-ins
    )
    assert set(upward) - KNOWN_UPWARD == set()


def test_the_checks_can_fail():
    """A cycle, a private import and an upward import are each found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert rank("lmvalue.cli") > rank("lmvalue.data.sources")
    assert rank("lmvalue.prompting.training") > rank("lmvalue.prompting.scorer")
