"""Reliability: rows match input lines, bad inputs are one clear message (exit 2, no traceback),
every flag a message suggests is one the command accepts (and works), failed starts can be rerun,
and a study with a step budget gives the same scores every time."""

import csv
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import TINY_MODEL as TINY

from lmvalue.cli import _subparser, build_parser, main
from lmvalue.config import FinetuneConfig, build_config
from lmvalue.finetuning import finetune

TINY_ARGS = [f"{k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def classifier(reviews, char_tokenizer_dir, tmp_path_factory):
    """A tiny network classifier (pos/neg) trained for a few steps: a model folder for predict/evaluate."""
    out = tmp_path_factory.mktemp("clf") / "run"
    over = {
        **TINY,
        "model.from_scratch": True,
        "model.tokenizer": str(char_tokenizer_dir),
        "budget.train_size": 40,
        "data.test_size": 50,
        "data.max_length": 32,
        "train.max_steps": 2,
        "train.min_steps": 1,
        "train.output_dir": str(out),
        "train.progress": False,
    }
    finetune(build_config(FinetuneConfig, overrides=over), train_examples=reviews[:300])
    return out / "model"


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def flags_of(command: str) -> set[str]:
    parser = _subparser(build_parser(), command)
    return {o for a in parser._actions for o in a.option_strings}


def assert_clear_error(code: int, err: str, command: str, *, contains: str = "") -> str:
    """Exit 2, one message line that starts with the command, no traceback, only real flags."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith(f"lmvalue {command}: error:")]
    assert len(lines) == 1, err
    message = err[err.index(lines[0]) :]
    # a command quoted in backticks (`lmvalue value ... --overwrite`) is checked against its own flags
    quoted = re.findall(r"`lmvalue (\w+)([^`]*)`", message)
    for other, args in quoted:
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w.-]*)", args):
            assert flag in flags_of(other), f"{other} has no {flag}, yet a message quotes it: {message}"
    plain = re.sub(r"`lmvalue \w+[^`]*`", "", message)
    for flag in re.findall(r"(?<![\w-])(--[a-z][\w.-]*)", plain):
        assert flag in flags_of(command), f"{command} has no {flag}, yet its message suggests it: {message}"
    assert contains in message, message
    return message


# --- rows match input lines -------------------------------------------------------------------------


SEPARATORS = "good\u0085mid\u2028x\nline two\n\nline\u2029three\nfour\u000bfive\u000cend\nlast"


def test_predict_gives_one_row_per_newline_line(classifier, tmp_path, capsys):
    """U+0085, U+2028, U+2029, \\v and \\f inside lines stay inside them (str.splitlines would cut)."""
    src = tmp_path / "in.txt"
    src.write_text(SEPARATORS, encoding="utf-8")
    code, out, err = run_cli(["predict", "-m", classifier, "-i", src], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2] == {"line": 3, "empty": True}
    assert rows[0]["text"].startswith("good") and "x" in rows[0]["text"]
    assert rows[5]["text"] == "last"
    # the same from standard input and into a CSV file
    csv_out = tmp_path / "sub" / "out.csv"  # a missing parent folder is created
    sys.stdin = open(src, encoding="utf-8")  # noqa: SIM115 - read whole by predict
    try:
        code, _, err = run_cli(["predict", "-m", classifier, "-i", "-", "-o", csv_out], capsys)
    finally:
        sys.stdin.close()
        sys.stdin = sys.__stdin__
    assert code == 0, err
    with open(csv_out, encoding="utf-8", newline="") as f:
        assert [int(r["line"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def test_line_readers_cut_at_newline_only(tmp_path):
    """Every reader of one-record-per-line text: corpora, jsonl tables and predict inputs."""
    from lmvalue.data.sources import iter_texts, load_labeled

    (tmp_path / "c.txt").write_text(SEPARATORS, encoding="utf-8")
    assert len(list(iter_texts(str(tmp_path / "c.txt")))) == 5  # the blank line is not a document
    rows = [{"text": "a\u2028b", "label": "x"}, {"text": "c\u0085d", "label": "y"}]
    (tmp_path / "t.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    assert [e["text"] for e in load_labeled(str(tmp_path / "t.jsonl"))] == ["a\u2028b", "c\u0085d"]


# --- one clear message for each bad input -----------------------------------------------------------


def test_output_paths_that_cannot_be_used(classifier, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me\n")
    src = tmp_path / "in.txt"
    src.write_text("好\n", encoding="utf-8")
    for command, argv in {
        "pretrain": ["pretrain", "--data", src, "-o", a_file],
        "finetune": ["finetune", "--init-from", classifier, "-o", a_file],
        "evaluate": ["evaluate", "-m", classifier, "--data", "demo:zh-reviews", "-o", a_file],
        "value": ["value", "--data", "demo:zh-reviews", "-o", a_file],
        "demo": ["demo", "-o", a_file],
        "tokenizer": ["tokenizer", "--data", src, "-o", a_file],
    }.items():
        code, _, err = run_cli(argv, capsys)
        assert_clear_error(code, err, command, contains=str(a_file))
        assert a_file.read_text() == "keep me\n"
    (tmp_path / "out.jsonl").mkdir()
    code, _, err = run_cli(["predict", "-m", classifier, "-i", src, "-o", tmp_path / "out.jsonl"], capsys)
    assert_clear_error(code, err, "predict", contains="is a folder")
    code, _, err = run_cli(["predict", "-m", classifier, "-i", src, "-o", a_file / "x.jsonl"], capsys)
    assert_clear_error(code, err, "predict", contains="not a folder")
    assert a_file.read_text() == "keep me\n"


def test_a_full_disk_is_a_message_and_leaves_the_old_file(classifier, tmp_path, capsys, monkeypatch):
    """ENOSPC while writing predictions: exit 2, and the previous output file is untouched."""
    import errno

    import lmvalue.files

    src = tmp_path / "in.txt"
    src.write_text("好\n差\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullDisk(f) if "w" in mode else f

    monkeypatch.setattr(lmvalue.files, "open", fake_open, raising=False)
    code, _, err = run_cli(["predict", "-m", classifier, "-i", src, "-o", out], capsys)
    assert_clear_error(code, err, "predict", contains="No space left on device")
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.jsonl")] == []


def test_undecodable_and_binary_inputs(classifier, tmp_path, capsys):
    gb = tmp_path / "gb.txt"
    gb.write_text("这个东西很好\n质量太差了\n", encoding="gb18030")
    code, _, err = run_cli(["predict", "-m", classifier, "-i", gb], capsys)
    msg = assert_clear_error(code, err, "predict", contains="--encoding gb18030")
    # the suggested flag works
    code, out, err = run_cli(["predict", "-m", classifier, "-i", gb, "--encoding", "gb18030"], capsys)
    assert code == 0, err
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["这个东西很好", "质量太差了"]
    code, out, _ = run_cli(["predict", "-m", classifier, "-i", gb, "--errors", "replace"], capsys)
    assert code == 0 and len(out.splitlines()) == 2, msg
    binary = tmp_path / "random.txt"
    binary.write_bytes(bytes(range(256)) * 20)
    code, _, err = run_cli(["predict", "-m", classifier, "-i", binary], capsys)
    assert_clear_error(code, err, "predict", contains="binary")


def test_bad_model_weights(classifier, tmp_path, capsys):
    import shutil

    src = tmp_path / "in.txt"
    src.write_text("好\n", encoding="utf-8")
    weights = (classifier / "model.safetensors").read_bytes()
    for name, content in {
        "truncated": weights[: len(weights) // 2],
        "random": os.urandom(4096),
        "short": weights[:5],
        "missing": None,
    }.items():
        folder = tmp_path / name
        shutil.copytree(classifier, folder)
        if content is None:
            (folder / "model.safetensors").unlink()
        else:
            (folder / "model.safetensors").write_bytes(content)
        for command, argv in {
            "predict": ["predict", "-m", folder, "-i", src],
            "evaluate": ["evaluate", "-m", folder, "--data", "demo:zh-reviews"],
        }.items():
            code, _, err = run_cli(argv, capsys)
            assert_clear_error(code, err, command, contains="model.safetensors")
    pickled = tmp_path / "pickled"
    shutil.copytree(classifier, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    code, _, err = run_cli(["predict", "-m", pickled, "-i", src], capsys)
    assert_clear_error(code, err, "predict", contains="never loads pickled")


def damaged_registry(study: Path) -> None:
    """Keep the SQLite header, scramble the rest."""
    path = study / "results.sqlite"
    data = bytearray(path.read_bytes())
    for i in range(100, len(data)):
        data[i] = (i * 7919) % 251
    path.write_bytes(bytes(data))


def small_labeled(tmp_path) -> Path:
    from lmvalue.data.sources import load_labeled

    rows = load_labeled("demo:zh-reviews")
    rows = [r for r in rows if r["label"] == "pos"][:60] + [r for r in rows if r["label"] == "neg"][:60]
    path = tmp_path / "labeled.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_damaged_registry_and_study_json(tmp_path, capsys):
    data = small_labeled(tmp_path)
    study = tmp_path / "study"
    base = ["value", "--data", data, "--arms", "tfidf", "--budgets", "8", "--seeds", "1", "--test-size", "40"]
    code, _, err = run_cli([*base, "-o", study], capsys)
    assert code == 0, err
    damaged_registry(study)
    before = (study / "results.sqlite").read_bytes()
    code, _, err = run_cli(["report", study], capsys)
    assert_clear_error(code, err, "report", contains="damaged")
    code, _, err = run_cli([*base, "-o", study, "--resume"], capsys)
    assert_clear_error(code, err, "value", contains="damaged")
    assert (study / "results.sqlite").read_bytes() == before  # untouched
    code, _, err = run_cli([*base, "-o", study, "--overwrite"], capsys)  # the way out it names
    assert code == 0, err
    (study / "study.json").write_text("{not json")
    code, _, err = run_cli(["report", study], capsys)
    assert_clear_error(code, err, "report", contains="study.json")


def test_a_study_that_cannot_work_is_refused_before_anything_runs(tmp_path, capsys):
    data = small_labeled(tmp_path)
    out = tmp_path / "study"
    for extra, expected in [
        (["--arms", "pretrained:foo"], "unknown objective 'foo'"),
        (["--arms", "scratch", "--pretrain-minutes", "0"], "--pretrain-minutes must be > 0"),
        (["--arms", "scratch", "--pretrain-minutes", "-5"], "--pretrain-minutes must be > 0"),
        (["--arms", "scratch", "--pretrain-steps", "0"], "--pretrain-steps must be >= 1"),
        (["--arms", f"checkpoint:{tmp_path / 'nope'}"], "does not exist"),
        (["--arms", "continued:./nope/model"], "does not exist"),
        (["--arms", "checkpoint:nobody-xyz/no-such-model"], "cannot resolve checkpoint"),
    ]:
        code, _, err = run_cli(["value", "--data", data, "-o", out, *extra], capsys)
        assert_clear_error(code, err, "value", contains=expected)
        assert not out.exists()


def test_failed_starts_leave_a_folder_the_same_command_reruns_in(tmp_path, capsys, zh_tokenizer_dir):
    from lmvalue.data.sources import iter_texts

    bad = tmp_path / "bad.txt"
    bad.write_bytes("".join(t + "\n" for t in iter_texts("demo:zh-reviews", max_docs=300)).encode("gb18030"))
    run = tmp_path / "run"
    argv = [
        "pretrain",
        "--data",
        bad,
        "-o",
        run,
        "--max-steps",
        "2",
        "--no-progress",
        f"model.tokenizer={zh_tokenizer_dir}",
        "data.block_size=32",
        "train.batch_size=4",
        *TINY_ARGS,
    ]
    code, _, err = run_cli(argv, capsys)
    assert_clear_error(code, err, "pretrain", contains="--data.encoding gb18030")
    code, _, err = run_cli([*argv, "--resume"], capsys)
    assert_clear_error(code, err, "pretrain", contains="without --resume")
    # the same command, with the fix the message named, in the same folder: no --overwrite needed
    code, _, err = run_cli([*argv, "--data.encoding", "gb18030"], capsys)
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["status"] == "finished"

    # a study whose data fails: nothing left behind, and the fixed command runs in the same folder
    gb_csv = tmp_path / "gb.csv"
    good = small_labeled(tmp_path)
    rows = [json.loads(line) for line in good.read_text(encoding="utf-8").splitlines()]
    with open(gb_csv, "w", encoding="gb18030", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([(r["text"], r["label"]) for r in rows])
    study = tmp_path / "study"
    base = ["value", "--data", gb_csv, "-o", study, "--arms", "tfidf", "--budgets", "8", "--seeds", "1"]
    base += ["--test-size", "40"]
    code, _, err = run_cli(base, capsys)
    assert_clear_error(code, err, "value", contains="--encoding gb18030")
    assert not study.exists()
    study.mkdir()  # an empty folder the user made: kept, and still usable
    code, _, err = run_cli(base, capsys)
    assert code == 2 and study.is_dir() and not any(study.iterdir())
    code, _, err = run_cli([*base, "--encoding", "gb18030"], capsys)
    assert code == 0, err


def test_every_command_answers_help(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert len(commands) >= 11
    for command in commands:
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0
        assert f"lmvalue {command}" in capsys.readouterr().out


def test_bare_overrides_may_follow_options(tmp_path, capsys):
    """`--data x section.field=V --preset tiny other.field=W` used to stop with 'unrecognized arguments'."""
    code, _, err = run_cli(
        [
            "pretrain",
            "data.max_docs=5",
            "--data",
            "demo:zh-reviews",
            "train.max_steps=0",
            "-o",
            tmp_path / "r",
        ],
        capsys,
    )
    assert_clear_error(code, err, "pretrain", contains="train.max_steps")


# --- the same command twice gives the same study ------------------------------------------------


def test_a_study_with_a_step_budget_gives_the_same_scores_twice(tmp_path):
    """Two processes with different hash seeds: tokenizer, pretraining, word vectors and every cell
    must come out the same (a minute budget cannot promise this: it reaches other step counts)."""
    data = small_labeled(tmp_path)
    scores = []
    for run in range(2):
        out = tmp_path / f"study{run}"
        argv = [
            sys.executable,
            "-m",
            "lmvalue.cli",
            "value",
            "--data",
            str(data),
            "-o",
            str(out),
            "--arms",
            "scratch",
            "pretrained:mlm",
            "tfidf",
            "embeddings",
            "--budgets",
            "16",
            "--seeds",
            "2",
            "--test-size",
            "40",
            "--vocab-size",
            "400",
            "--pretrain-steps",
            "12",
            "--pretrain",
            *[f"{k}={v}" for k, v in TINY.items() if k != "model.preset"],
            "data.block_size=32",
            "train.batch_size=8",
            "train.eval_every=6",
            "--finetune",
            "train.max_steps=6",
            "train.min_steps=6",
            "train.batch_size=8",
            "data.max_length=32",
            "method.vectors_epochs=2",
        ]
        env = {**os.environ, "PYTHONHASHSEED": str(run + 1), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        db = sqlite3.connect(out / "results.sqlite")
        cells = db.execute("SELECT arm, budget, seed, status, score FROM cells ORDER BY arm, budget, seed")
        scores.append(list(cells))
        arms = dict(db.execute("SELECT arm, info FROM arms"))
        db.close()
        assert json.loads(arms["pretrained:mlm"])["pretrain_steps"] == 12
        assert "pretraining steps" in (out / "report.md").read_text()
    assert len(scores[0]) == 8 and all(c[3] == "done" for c in scores[0])
    assert scores[0] == scores[1]
    a, b = tmp_path / "study0", tmp_path / "study1"
    assert (a / "tokenizer" / "tokenizer.json").read_bytes() == (
        b / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    from safetensors.torch import load_file

    wa = load_file(a / "arms" / "pretrained_mlm" / "model" / "model.safetensors")
    wb = load_file(b / "arms" / "pretrained_mlm" / "model" / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_resume_state_is_plain_data_that_loads_without_pickle(tmp_path):
    """Checkpoints' RNG and loop state load with torch.load(weights_only=True): no pickled objects."""
    import random

    import numpy as np
    import torch

    from lmvalue.loop import _rng_state, _set_rng_state

    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    torch.save(_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
