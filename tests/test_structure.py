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
    ("lmvalue.weights", "lmvalue.checkpoint", "lmvalue.models", "lmvalue.vector_init", "lmvalue.versions"),
    ("lmvalue.objectives", "lmvalue.methods", "lmvalue.tasks"),
    ("lmvalue.loop", "lmvalue.inference", "lmvalue.transfer", "lmvalue.prompting", "lmvalue.generate"),
    ("lmvalue.pretraining", "lmvalue.finetuning", "lmvalue.prompting.training"),
    ("lmvalue.continual", "lmvalue.value", "lmvalue.serve", "lmvalue.drift", "lmvalue.refresh"),
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


def test_layers_point_one_way():
    edges, _ = import_graph()
    upward = sorted(
        (a, b)
        for a, targets in edges.items()
        for b in targets
        if rank(b) > rank(a) and not b.startswith(a + ".")  # a package may list its own plug-ins
    )
    assert upward == []


def test_the_checks_can_fail():
    """A cycle, a private import and an upward import are each found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert rank("lmvalue.cli") > rank("lmvalue.data.sources")
    assert rank("lmvalue.prompting.training") > rank("lmvalue.prompting.scorer")


CHARLR = """
from lmvalue.methods.tfidf import classifier_inputs, describe, load, prepare, save  # noqa: F401

def train(train, dev, spec, cfg, seed, score):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True)
    logreg = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
    pipe = Pipeline([("tfidf", vectorizer), ("logreg", logreg)])
    pipe.fit(classifier_inputs(train), [ex["label"] for ex in train])
    info = {"analyzer": "char_wb", "ngram_range": (1, 4), "features": len(vectorizer.vocabulary_), "C": 1.0}
    return pipe, info
"""


def test_a_method_is_one_module_and_one_registry_entry(reviews, tmp_path, monkeypatch, capsys):
    """The docs/finetuning.md walkthrough: a module and a METHODS entry are all finetune, predict and
    the config checks need."""
    import json
    import types

    from lmvalue.cli import main
    from lmvalue.methods import METHODS, Method

    charlr = types.ModuleType("charlr")
    exec(CHARLR, charlr.__dict__)
    entry = Method(
        "charlr",
        "char n-grams + balanced logistic regression",
        apply=None,
        family="classical",
        trainer=charlr,
        uses_model=False,
    )
    monkeypatch.setitem(METHODS, "charlr", entry)
    data = tmp_path / "reviews.jsonl"
    data.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reviews[:600]), encoding="utf-8"
    )
    run = tmp_path / "run"
    argv = ["finetune", "--data", data, "--method", "charlr", "--train-size", "200", "data.test_size=200"]
    assert main([str(a) for a in [*argv, "-o", run, "--no-progress"]]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "charlr" and metrics["start"] == "none"
    assert metrics["test"]["accuracy"] > 0.7  # it learned: 200 labels of real reviews
    (tmp_path / "in.txt").write_text("质量很好，非常满意\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "-m", str(run / "model"), "-i", str(tmp_path / "in.txt")]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["label"] in ("pos", "neg") and set(row["probs"]) == {"pos", "neg"}


def test_the_public_api_is_the_recipes_and_import_lmvalue_stays_light():
    """``from lmvalue import pretrain, finetune, run_study, load_task_model`` gives the functions (not
    the modules), loaded on first use: ``import lmvalue`` alone imports no torch. The root package's
    lazy loading (importlib, by name) is the one import the layer check does not see."""
    import subprocess
    import sys

    code = "import sys, lmvalue; print('torch' in sys.modules, sorted(lmvalue.__all__)[:3])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False"), out
    from lmvalue import finetune, load_task_model, pretrain, run_study
    from lmvalue.finetuning import finetune as finetune_fn
    from lmvalue.inference import load_task_model as load_fn
    from lmvalue.pretraining import pretrain as pretrain_fn
    from lmvalue.value.study import run_study as run_study_fn

    assert (pretrain, finetune, run_study, load_task_model) == (
        pretrain_fn,
        finetune_fn,
        run_study_fn,
        load_fn,
    )
    import lmvalue

    for name in lmvalue.__all__:
        assert getattr(lmvalue, name) is not None, name
