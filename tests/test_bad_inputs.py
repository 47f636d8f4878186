"""Bad inputs, as a new user types them, across every command: each is ONE clear message (what,
where, how to fix, naming only flags the command has), exit code 2, no traceback, no input file
changed, and the same command fails the same way again (nothing left behind blocks a retry).

``python tests/test_bad_inputs.py`` runs the cases and writes the table of ``docs/errors.md``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tests/test_bad_inputs.py` and pytest alike
    sys.path.insert(0, str(ROOT))

from tests.test_reliability import assert_clear_error  # noqa: E402

from lmvalue.cli import main  # noqa: E402

TINY = ["model.hidden=64", "model.heads=2", "model.ffn=128", "model.max_position_embeddings=128"]


@dataclass(frozen=True)
class Case:
    command: str
    input: str  # what is wrong, in words (the table's second column)
    argv: tuple[str, ...]  # {d}: the files folder, {pt}: a pretrained run, {clf}: a classifier
    contains: str = ""  # a piece of the expected message


def C(command: str, what: str, *argv: str, contains: str = "") -> Case:
    return Case(command, what, (command, *argv), contains)


PT = ("--preset", "tiny", *TINY, "--max-steps", "2", "--no-progress", "data.block_size=32")
FT = ("--max-steps", "2", "train.min_steps=1", "--no-progress", "data.max_length=32", "data.test_size=40")
VAL = ("--arms", "tfidf", "--budgets", "8", "--seeds", "1", "--test-size", "40")

CASES: list[Case] = [
    # --- tokenizer -------------------------------------------------------------------------------
    C("tokenizer", "missing --data file", "--data", "{d}/nope.txt", "-o", "{d}/out/tok", contains="nope.txt"),
    C("tokenizer", "empty --data file", "--data", "{d}/empty.txt", "-o", "{d}/out/tok", contains="empty.txt"),
    C(
        "tokenizer",
        "blank-lines-only file",
        "--data",
        "{d}/blank.txt",
        "-o",
        "{d}/out/tok",
        contains="blank.txt",
    ),
    C(
        "tokenizer",
        "empty folder as --data",
        "--data",
        "{d}/emptydir",
        "-o",
        "{d}/out/tok",
        contains="emptydir",
    ),
    C("tokenizer", "unknown extension", "--data", "{d}/reviews.xlsx", "-o", "{d}/out/tok", contains="xlsx"),
    C(
        "tokenizer",
        "non-UTF-8 file",
        "--data",
        "{d}/gb.txt",
        "-o",
        "{d}/out/tok",
        contains="--encoding gb18030",
    ),
    C(
        "tokenizer",
        "unknown --encoding",
        "--data",
        "{d}/gb.txt",
        "--encoding",
        "gbk2",
        "-o",
        "{d}/out/tok",
        contains="gbk2",
    ),
    C(
        "tokenizer",
        "--vocab-size 0",
        "--data",
        "{d}/good.txt",
        "--vocab-size",
        "0",
        "-o",
        "{d}/out/tok",
        contains="--vocab-size",
    ),
    C(
        "tokenizer",
        "--vocab-size -5",
        "--data",
        "{d}/good.txt",
        "--vocab-size",
        "-5",
        "-o",
        "{d}/out/tok",
        contains="--vocab-size",
    ),
    C(
        "tokenizer",
        "--vocab-size abc",
        "--data",
        "{d}/good.txt",
        "--vocab-size",
        "abc",
        "-o",
        "{d}/out/tok",
        contains="--vocab-size",
    ),
    C(
        "tokenizer",
        "--kind foo",
        "--data",
        "{d}/good.txt",
        "--kind",
        "foo",
        "-o",
        "{d}/out/tok",
        contains="foo",
    ),
    C(
        "tokenizer",
        "--max-docs 0",
        "--data",
        "{d}/good.txt",
        "--max-docs",
        "0",
        "-o",
        "{d}/out/tok",
        contains="--max-docs",
    ),
    C("tokenizer", "unknown demo data", "--data", "demo:nope", "-o", "{d}/out/tok", contains="demo:nope"),
    C(
        "tokenizer",
        "--errors foo",
        "--data",
        "{d}/gb.txt",
        "--errors",
        "foo",
        "-o",
        "{d}/out/tok",
        contains="--errors",
    ),
    C("tokenizer", "-o onto a file", "--data", "{d}/good.txt", "-o", "{d}/a_file", contains="a_file"),
    C(
        "tokenizer",
        "csv without the text column",
        "--data",
        "{d}/notext.csv",
        "-o",
        "{d}/out/tok",
        contains="--text-column",
    ),
    # --- pretrain --------------------------------------------------------------------------------
    C(
        "pretrain",
        "missing --data file",
        "--data",
        "{d}/nope.txt",
        "-o",
        "{d}/out/pt",
        *PT,
        contains="nope.txt",
    ),
    C(
        "pretrain",
        "empty --data file",
        "--data",
        "{d}/empty.txt",
        "-o",
        "{d}/out/pt",
        *PT,
        contains="empty.txt",
    ),
    C(
        "pretrain",
        "non-UTF-8 --data",
        "--data",
        "{d}/gb.txt",
        "-o",
        "{d}/out/pt",
        *PT,
        contains="--data.encoding gb18030",
    ),
    C(
        "pretrain",
        "jsonl with a non-object line",
        "--data",
        "{d}/badline.jsonl",
        "-o",
        "{d}/out/pt",
        *PT,
        contains="line 3",
    ),
    C(
        "pretrain",
        "csv without the text column",
        "--data",
        "{d}/notext.csv",
        "-o",
        "{d}/out/pt",
        *PT,
        contains="--data.text_column",
    ),
    C(
        "pretrain",
        "--max-steps -1",
        "--data",
        "{d}/good.txt",
        "-o",
        "{d}/out/pt",
        *PT[:-4],
        "--max-steps",
        "-1",
        contains="max_steps",
    ),
    C("pretrain", "--lr 0", "--data", "{d}/good.txt", "-o", "{d}/out/pt", *PT, "--lr", "0", contains="lr"),
    C(
        "pretrain",
        "--lr abc",
        "--data",
        "{d}/good.txt",
        "-o",
        "{d}/out/pt",
        *PT,
        "--lr",
        "abc",
        contains="abc",
    ),
    C(
        "pretrain",
        "--preset huge",
        "--data",
        "{d}/good.txt",
        "-o",
        "{d}/out/pt",
        "--preset",
        "huge",
        contains="huge",
    ),
    C(
        "pretrain",
        "--arch foo",
        "--data",
        "{d}/good.txt",
        "-o",
        "{d}/out/pt",
        "--arch",
        "foo",
        contains="foo",
    ),
    C(
        "pretrain",
        "--objectives foo",
        "--data",
        "{d}/good.txt",
        "-o",
        "{d}/out/pt",
        "--objectives",
        "foo",
        contains="foo",
    ),
    C(
        "pretrain",
        "YAML syntax error",
        "--config",
        "{d}/syntax.yaml",
        "-o",
        "{d}/out/pt",
        contains="syntax.yaml",
    ),
    C(
        "pretrain",
        "YAML unknown section",
        "--config",
        "{d}/unknown_section.yaml",
        "-o",
        "{d}/out/pt",
        contains="bogus",
    ),
    C("pretrain", "YAML wrong type", "--config", "{d}/wrong_type.yaml", "-o", "{d}/out/pt", contains="lr"),
    C(
        "pretrain",
        "YAML list where a section is expected",
        "--config",
        "{d}/list_section.yaml",
        "-o",
        "{d}/out/pt",
        contains="train",
    ),
    C(
        "pretrain",
        "YAML that is a list",
        "--config",
        "{d}/top_list.yaml",
        "-o",
        "{d}/out/pt",
        contains="top_list.yaml",
    ),
    C("pretrain", "non-UTF-8 YAML --config", "--config", "{d}/gb.yaml", "-o", "{d}/out/pt", contains="UTF-8"),
    C("pretrain", "unknown demo data", "--data", "demo:nope", "-o", "{d}/out/pt", *PT, contains="demo:nope"),
    C(
        "pretrain",
        "--init-from a data file",
        "--data",
        "{d}/good.txt",
        "-o",
        "{d}/out/pt",
        "--init-from",
        "{d}/good.txt",
        contains="--model.init_from",
    ),
    C(
        "pretrain",
        "missing --config file",
        "--config",
        "{d}/nope.yaml",
        "-o",
        "{d}/out/pt",
        contains="nope.yaml",
    ),
    C(
        "pretrain",
        "--config is a folder",
        "--config",
        "{d}/emptydir",
        "-o",
        "{d}/out/pt",
        contains="emptydir",
    ),
    C(
        "pretrain",
        "--resume where nothing exists",
        "--data",
        "{d}/good.txt",
        "-o",
        "{d}/out/none",
        "--resume",
        *PT,
        contains="--resume",
    ),
    C("pretrain", "-o onto a file", "--data", "{d}/good.txt", "-o", "{d}/a_file", *PT, contains="a_file"),
    C(
        "pretrain",
        "override without =",
        "--data",
        "{d}/good.txt",
        "-o",
        "{d}/out/pt",
        "train.lr",
        *PT,
        contains="train.lr",
    ),
    C(
        "pretrain",
        "unknown dotted setting",
        "--data",
        "{d}/good.txt",
        "-o",
        "{d}/out/pt",
        "train.lrr=1",
        *PT,
        contains="train.lrr",
    ),
    C(
        "pretrain",
        "--init-from a missing folder",
        "--data",
        "{d}/good.txt",
        "-o",
        "{d}/out/pt",
        "--init-from",
        "{d}/nope_model",
        contains="nope_model",
    ),
    # --- finetune --------------------------------------------------------------------------------
    C(
        "finetune",
        "missing --data file",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/nope.csv",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="nope.csv",
    ),
    C(
        "finetune",
        "non-UTF-8 --data",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/gb.csv",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="--data.encoding gb18030",
    ),
    C(
        "finetune",
        "csv without the text column",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/notext.csv",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="--data.text_column",
    ),
    C(
        "finetune",
        "csv without the label column",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/nolabel.csv",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="--data.label_column",
    ),
    C(
        "finetune",
        "one class only",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/oneclass.csv",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="one",
    ),
    C(
        "finetune",
        "jsonl with a non-object line",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/badline.jsonl",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="line 3",
    ),
    C(
        "finetune",
        "--train-size 0",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--train-size",
        "0",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="train_size",
    ),
    C(
        "finetune",
        "--train-size -3",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--train-size",
        "-3",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="train_size",
    ),
    C(
        "finetune",
        "--train-size larger than the data with --strict",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--train-size",
        "100000",
        "--strict",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="100000",
    ),
    C(
        "finetune",
        "--test-size larger than the data",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/ft",
        *FT,
        "data.test_size=100000",
        contains="--data.test_size",
    ),
    C(
        "finetune",
        "--method foo",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--method",
        "foo",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="foo",
    ),
    C(
        "finetune",
        "--lr abc",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--lr",
        "abc",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="abc",
    ),
    C(
        "finetune",
        "--batch-size 0",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--batch-size",
        "0",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="batch_size",
    ),
    C(
        "finetune",
        "--init-from a missing folder",
        "--init-from",
        "{d}/nope_model",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="nope_model",
    ),
    C(
        "finetune",
        "--init-from a data file",
        "--init-from",
        "{d}/good.txt",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="good.txt",
    ),
    C(
        "finetune",
        "--per-class 0",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--per-class",
        "0",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="per_class",
    ),
    C(
        "finetune",
        "--per-class larger than the data with --strict",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--per-class",
        "5000",
        "--strict",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="--budget.per_class",
    ),
    C(
        "finetune",
        "YAML syntax error",
        "--config",
        "{d}/syntax.yaml",
        "-o",
        "{d}/out/ft",
        contains="syntax.yaml",
    ),
    C(
        "finetune",
        "--tokenizer a missing folder",
        "--from-scratch",
        "--tokenizer",
        "{d}/nope_tok",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/ft",
        *FT,
        contains="nope_tok",
    ),
    C(
        "finetune",
        "YAML unknown section",
        "--config",
        "{d}/unknown_section.yaml",
        "-o",
        "{d}/out/ft",
        contains="bogus",
    ),
    C(
        "finetune",
        "--resume where nothing exists",
        "--init-from",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/none",
        "--resume",
        *FT,
        contains="--resume",
    ),
    # --- generate --------------------------------------------------------------------------------
    C("generate", "a masked-LM model", "-m", "{pt}", "-p", "好", contains="causal"),
    C("generate", "a missing model folder", "-m", "{d}/nope_model", "-p", "好", contains="nope_model"),
    C(
        "generate",
        "--max-new-tokens 0",
        "-m",
        "{pt}",
        "-p",
        "好",
        "--max-new-tokens",
        "0",
        contains="--max-new-tokens",
    ),
    C(
        "generate",
        "--max-new-tokens -5",
        "-m",
        "{pt}",
        "-p",
        "好",
        "--max-new-tokens",
        "-5",
        contains="--max-new-tokens",
    ),
    C(
        "generate",
        "--temperature -1",
        "-m",
        "{pt}",
        "-p",
        "好",
        "--temperature",
        "-1",
        contains="--temperature",
    ),
    C("generate", "--top-p 0", "-m", "{pt}", "-p", "好", "--top-p", "0", contains="--top-p"),
    C(
        "generate",
        "--num-samples 0",
        "-m",
        "{pt}",
        "-p",
        "好",
        "--num-samples",
        "0",
        contains="--num-samples",
    ),
    # --- evaluate --------------------------------------------------------------------------------
    C("evaluate", "missing --data file", "-m", "{clf}", "--data", "{d}/nope.csv", contains="nope.csv"),
    C("evaluate", "non-UTF-8 --data", "-m", "{clf}", "--data", "{d}/gb.csv", contains="--encoding gb18030"),
    C(
        "evaluate",
        "labels the model lacks",
        "-m",
        "{clf}",
        "--data",
        "{d}/otherlabels.csv",
        contains="--unknown-labels keep",
    ),
    C(
        "evaluate",
        "csv without the label column",
        "-m",
        "{clf}",
        "--data",
        "{d}/nolabel.csv",
        contains="--label-column",
    ),
    C(
        "evaluate",
        "csv without the text column",
        "-m",
        "{clf}",
        "--data",
        "{d}/notext.csv",
        contains="--text-column",
    ),
    C(
        "evaluate",
        "unknown --encoding",
        "-m",
        "{clf}",
        "--data",
        "{d}/gb.csv",
        "--encoding",
        "gbk2",
        contains="gbk2",
    ),
    C(
        "evaluate",
        "--unknown-labels foo",
        "-m",
        "{clf}",
        "--data",
        "{d}/labeled.jsonl",
        "--unknown-labels",
        "foo",
        contains="--unknown-labels",
    ),
    C("evaluate", "empty --data file", "-m", "{clf}", "--data", "{d}/empty.csv", contains="empty.csv"),
    C(
        "evaluate",
        "a pretrained (not fine-tuned) model",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        contains="fine-tun",
    ),
    C(
        "evaluate",
        "a missing model folder",
        "-m",
        "{d}/nope_model",
        "--data",
        "{d}/labeled.jsonl",
        contains="nope_model",
    ),
    C(
        "evaluate",
        "-o onto a file",
        "-m",
        "{clf}",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/a_file",
        contains="a_file",
    ),
    # --- predict ---------------------------------------------------------------------------------
    C(
        "predict",
        "--batch-size 0",
        "-m",
        "{clf}",
        "-i",
        "{d}/good.txt",
        "--batch-size",
        "0",
        contains="--batch-size",
    ),
    C(
        "predict",
        "--batch-size abc",
        "-m",
        "{clf}",
        "-i",
        "{d}/good.txt",
        "--batch-size",
        "abc",
        contains="--batch-size",
    ),
    C("predict", "a gzip file as --input", "-m", "{clf}", "-i", "{d}/texts.txt.gz", contains="gzip"),
    C(
        "predict",
        "--batch-size -1",
        "-m",
        "{clf}",
        "-i",
        "{d}/good.txt",
        "--batch-size",
        "-1",
        contains="--batch-size",
    ),
    C("predict", "missing --input file", "-m", "{clf}", "-i", "{d}/nope.txt", contains="nope.txt"),
    C("predict", "a folder as --input", "-m", "{clf}", "-i", "{d}/emptydir", contains="emptydir"),
    C("predict", "non-UTF-8 --input", "-m", "{clf}", "-i", "{d}/gb.txt", contains="--encoding gb18030"),
    C(
        "predict",
        "csv without the text column",
        "-m",
        "{clf}",
        "-i",
        "{d}/notext.csv",
        contains="--text-column",
    ),
    C("predict", "jsonl with a non-object line", "-m", "{clf}", "-i", "{d}/badline.jsonl", contains="line 3"),
    C(
        "predict",
        "unknown output suffix",
        "-m",
        "{clf}",
        "-i",
        "{d}/good.txt",
        "-o",
        "{d}/out/p.xlsx",
        contains="xlsx",
    ),
    C(
        "predict",
        "a pretrained (not fine-tuned) model",
        "-m",
        "{pt}",
        "-i",
        "{d}/good.txt",
        contains="fine-tun",
    ),
    # --- value -----------------------------------------------------------------------------------
    C(
        "value",
        "missing --data file",
        "--data",
        "{d}/nope.csv",
        "-o",
        "{d}/out/study",
        *VAL,
        contains="nope.csv",
    ),
    C(
        "value",
        "non-UTF-8 --data",
        "--data",
        "{d}/gb.csv",
        "-o",
        "{d}/out/study",
        *VAL,
        contains="--encoding gb18030",
    ),
    C(
        "value",
        "non-UTF-8 --corpus",
        "--data",
        "{d}/labeled.jsonl",
        "--corpus",
        "{d}/gb.txt",
        "-o",
        "{d}/out/study",
        "--arms",
        "scratch",
        "pretrained:mlm",
        "--budgets",
        "8",
        "--seeds",
        "1",
        "--test-size",
        "40",
        "--pretrain-steps",
        "1",
        contains="--encoding gb18030",
    ),
    C(
        "value",
        "missing --corpus",
        "--data",
        "{d}/labeled.jsonl",
        "--corpus",
        "{d}/nope.txt",
        "-o",
        "{d}/out/study",
        "--arms",
        "scratch",
        "pretrained:mlm",
        "--budgets",
        "8",
        "--seeds",
        "1",
        "--test-size",
        "40",
        "--pretrain-steps",
        "1",
        contains="nope.txt",
    ),
    C(
        "value",
        "--seeds 0",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/study",
        *VAL[:-4],
        "--seeds",
        "0",
        "--test-size",
        "40",
        contains="--seeds",
    ),
    C(
        "value",
        "--budgets 0",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/study",
        "--arms",
        "tfidf",
        "--budgets",
        "0",
        "--seeds",
        "1",
        "--test-size",
        "40",
        contains="--budgets",
    ),
    C(
        "value",
        "--budgets 1",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/study",
        "--arms",
        "tfidf",
        "--budgets",
        "1",
        "--seeds",
        "1",
        "--test-size",
        "40",
        contains="--budgets",
    ),
    C(
        "value",
        "--test-size larger than the data",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/study",
        *VAL[:-2],
        "--test-size",
        "100000",
        contains="--test-size",
    ),
    C(
        "value",
        "--test-size 0",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/study",
        *VAL[:-2],
        "--test-size",
        "0",
        contains="--test-size",
    ),
    C(
        "value",
        "unknown arm",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/study",
        "--arms",
        "foo",
        contains="foo",
    ),
    C("value", "one class only", "--data", "{d}/oneclass.csv", "-o", "{d}/out/study", *VAL, contains="one"),
    C(
        "value",
        "a hub checkpoint that cannot be resolved offline",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/study",
        "--arms",
        "checkpoint:someone/not-cached-model",
        "tfidf",
        "--budgets",
        "8",
        "--seeds",
        "1",
        contains="go online",
    ),
    C(
        "value",
        "csv without the label column",
        "--data",
        "{d}/nolabel.csv",
        "-o",
        "{d}/out/study",
        *VAL,
        contains="--label-column",
    ),
    C(
        "value",
        "--resume where nothing exists",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/none",
        "--resume",
        *VAL,
        contains="--resume",
    ),
    C(
        "value",
        "--preset huge",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/out/study",
        "--arms",
        "scratch",
        "--budgets",
        "8",
        "--seeds",
        "1",
        "--test-size",
        "40",
        "--preset",
        "huge",
        contains="huge",
    ),
    C(
        "value",
        "-o onto a non-study folder",
        "--data",
        "{d}/labeled.jsonl",
        "-o",
        "{d}/nonstudy",
        *VAL,
        contains="nonstudy",
    ),
    # --- report ----------------------------------------------------------------------------------
    C("report", "a missing folder", "{d}/nope_study", contains="nope_study"),
    C("report", "a folder that is not a study", "{d}/nonstudy", contains="nonstudy"),
    C("report", "a file", "{d}/a_file", contains="a_file"),
    # --- demo ------------------------------------------------------------------------------------
    C("demo", "-o onto a non-study folder", "-o", "{d}/nonstudy", contains="nonstudy"),
    C("demo", "-o onto a file", "-o", "{d}/a_file", contains="a_file"),
    C("demo", "--resume where nothing exists", "-o", "{d}/out/none", "--resume", contains="--resume"),
    # --- continual -------------------------------------------------------------------------------
    C(
        "continual",
        "config without stages",
        "-c",
        "{d}/cont_nostages.yaml",
        "-o",
        "{d}/out/cont",
        contains="stages",
    ),
    C("continual", "missing config", "-c", "{d}/nope.yaml", "-o", "{d}/out/cont", contains="nope.yaml"),
    C(
        "continual",
        "config that is a list",
        "-c",
        "{d}/top_list.yaml",
        "-o",
        "{d}/out/cont",
        contains="top_list.yaml",
    ),
    C(
        "continual",
        "YAML syntax error",
        "-c",
        "{d}/syntax.yaml",
        "-o",
        "{d}/out/cont",
        contains="syntax.yaml",
    ),
    C(
        "continual",
        "stage with a missing corpus",
        "-c",
        "{d}/cont_missing.yaml",
        "-o",
        "{d}/out/cont",
        contains="nope.txt",
    ),
    C(
        "continual",
        "non-UTF-8 stage data",
        "-c",
        "{d}/cont_gb.yaml",
        "-o",
        "{d}/out/cont",
        contains="--encoding gb18030",
    ),
    C(
        "continual",
        "stage with an unknown setting",
        "-c",
        "{d}/cont_badstage.yaml",
        "-o",
        "{d}/out/cont",
        contains="steps",
    ),
    C(
        "continual",
        "--encoding that does not exist",
        "-c",
        "{d}/cont_gb.yaml",
        "--encoding",
        "gbk2",
        "-o",
        "{d}/out/cont",
        contains="gbk2",
    ),
    C(
        "continual",
        "--replay 1.5",
        "-c",
        "{d}/cont_gb.yaml",
        "--replay",
        "1.5",
        "-o",
        "{d}/out/cont",
        contains="replay",
    ),
    C(
        "continual",
        "--reg-weight -1",
        "-c",
        "{d}/cont_gb.yaml",
        "--reg-weight",
        "-1",
        "-o",
        "{d}/out/cont",
        contains="reg",
    ),
    C(
        "continual",
        "--resume where nothing exists",
        "-c",
        "{d}/cont_good.yaml",
        "--resume",
        "-o",
        "{d}/out/none",
        contains="--resume",
    ),
    # --- prompt ----------------------------------------------------------------------------------
    C(
        "prompt",
        "template without {mask}",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--template",
        "{text}很好。",
        "--verbalizer",
        "pos=好,neg=差",
        contains="{mask}",
    ),
    C(
        "prompt",
        "template without {text}",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--template",
        "总之很{mask}。",
        "--verbalizer",
        "pos=好,neg=差",
        contains="{text}",
    ),
    C(
        "prompt",
        "verbalizer missing a label",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--test-size",
        "40",
        "--template",
        "{text}总之很{mask}。",
        "--verbalizer",
        "pos=好,bad=差",
        contains="neg",
    ),
    C(
        "prompt",
        "malformed --verbalizer",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--template",
        "{text}总之很{mask}。",
        "--verbalizer",
        "pos好neg差",
        contains="--verbalizer",
    ),
    C(
        "prompt",
        "no template nor verbalizer",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        contains="--template",
    ),
    C(
        "prompt",
        "non-UTF-8 --data",
        "-m",
        "{pt}",
        "--data",
        "{d}/gb.csv",
        "--template",
        "{text}总之很{mask}。",
        "--verbalizer",
        "pos=好,neg=差",
        contains="--encoding gb18030",
    ),
    C(
        "prompt",
        "--test-size larger than the data",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--test-size",
        "100000",
        "--template",
        "{text}总之很{mask}。",
        "--verbalizer",
        "pos=好,neg=差",
        contains="--test-size",
    ),
    C(
        "prompt",
        "missing --prompt YAML",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--prompt",
        "{d}/nope.yaml",
        contains="nope.yaml",
    ),
    C(
        "prompt",
        "non-UTF-8 --prompt YAML",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--prompt",
        "{d}/gb.yaml",
        contains="UTF-8",
    ),
    C(
        "prompt",
        "--prompt is a folder",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--prompt",
        "{d}/emptydir",
        contains="folder",
    ),
    C(
        "prompt",
        "--prompt YAML without verbalizer",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--prompt",
        "{d}/prompt_noverb.yaml",
        contains="verbalizer",
    ),
    C(
        "prompt",
        "a missing model",
        "-m",
        "{d}/nope_model",
        "--data",
        "{d}/labeled.jsonl",
        "--test-size",
        "40",
        "--template",
        "{text}总之很{mask}。",
        "--verbalizer",
        "pos=好,neg=差",
        contains="nope_model",
    ),
    C(
        "prompt",
        "--max-length 0",
        "-m",
        "{pt}",
        "--data",
        "{d}/labeled.jsonl",
        "--test-size",
        "40",
        "--max-length",
        "0",
        "--template",
        "{text}总之很{mask}。",
        "--verbalizer",
        "pos=好,neg=差",
        contains="--max-length",
    ),
]


# --- the files the cases read ---------------------------------------------------------------------


def make_files(d: Path) -> None:
    from lmvalue.data.sources import load_labeled

    rows = load_labeled("demo:zh-reviews")
    rows = [r for r in rows if r["label"] == "pos"][:60] + [r for r in rows if r["label"] == "neg"][:60]
    d.mkdir(parents=True, exist_ok=True)

    def write_csv(name, header, data, encoding="utf-8"):
        with open(d / name, "w", encoding=encoding, newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(data)

    (d / "good.txt").write_text("".join(r["text"] + "\n" for r in rows), encoding="utf-8")
    (d / "gb.txt").write_bytes("".join(r["text"] + "\n" for r in rows).encode("gb18030"))
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_text("\n   \n\n\t\n", encoding="utf-8")
    (d / "reviews.xlsx").write_bytes(b"PK\x03\x04not really a spreadsheet")
    (d / "emptydir").mkdir(exist_ok=True)
    (d / "nonstudy").mkdir(exist_ok=True)
    (d / "nonstudy" / "notes.txt").write_text("mine\n")
    (d / "a_file").write_text("keep me\n")
    (d / "labeled.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    pairs = [(r["text"], r["label"]) for r in rows]
    write_csv("gb.csv", ["text", "label"], pairs, encoding="gb18030")
    write_csv("notext.csv", ["review", "label"], pairs)
    write_csv("nolabel.csv", ["text", "stars"], pairs)
    write_csv("oneclass.csv", ["text", "label"], [(t, "pos") for t, _ in pairs])
    write_csv("otherlabels.csv", ["text", "label"], [(t, "good" if y == "pos" else "bad") for t, y in pairs])
    (d / "empty.csv").write_text("text,label\n", encoding="utf-8")
    (d / "badline.jsonl").write_text(
        '{"text": "好", "label": "pos"}\n{"text": "差", "label": "neg"}\n[1, 2]\n', encoding="utf-8"
    )
    (d / "syntax.yaml").write_text("train:\n  lr: [1e-3\n  max_steps: 2\n", encoding="utf-8")
    (d / "unknown_section.yaml").write_text("bogus:\n  x: 1\n", encoding="utf-8")
    (d / "wrong_type.yaml").write_text("train:\n  lr: fast\n", encoding="utf-8")
    (d / "list_section.yaml").write_text("train:\n  - 1\n  - 2\n", encoding="utf-8")
    (d / "top_list.yaml").write_text("- train\n- data\n", encoding="utf-8")
    pre = {"model": {"preset": "tiny", "hidden": 64, "heads": 2, "ffn": 128}, "train": {"max_steps": 2}}

    def cont(name, stages):
        (d / name).write_text(json.dumps({"stages": stages, "pretrain": pre}), encoding="utf-8")

    (d / "cont_nostages.yaml").write_text(json.dumps({"pretrain": pre}), encoding="utf-8")
    cont("cont_missing.yaml", [{"source": str(d / "nope.txt")}])
    cont("cont_gb.yaml", [{"source": str(d / "gb.txt")}])
    cont("cont_good.yaml", [{"source": str(d / "good.txt")}])
    cont("cont_badstage.yaml", [{"source": str(d / "good.txt"), "steps": 3}])
    (d / "gb.yaml").write_bytes("# 中文注释\ntrain:\n  lr: 0.001\n".encode("gb18030"))
    import gzip

    (d / "texts.txt.gz").write_bytes(gzip.compress("好\n差\n".encode()))
    (d / "prompt_noverb.yaml").write_text("templates: ['{text}总之很{mask}。']\n", encoding="utf-8")


def build_models(d: Path) -> dict[str, str]:
    """One tiny pretrained run and one tiny classifier fine-tuned from it (about 15 s on 2 cores)."""
    pt, ft = d / "models" / "pt", d / "models" / "ft"
    for argv in (
        [
            "pretrain",
            "--data",
            d / "good.txt",
            "-o",
            pt,
            "--preset",
            "tiny",
            *TINY,
            "tokenizer.vocab_size=400",
        ]
        + ["--max-steps", "4", "--no-progress", "data.block_size=32", "train.batch_size=8"],
        ["finetune", "--init-from", pt, "--data", d / "labeled.jsonl", "--train-size", "60"]
        + [
            "data.test_size=40",
            "--max-steps",
            "2",
            "train.min_steps=1",
            "--no-progress",
            "data.max_length=32",
        ]
        + ["-o", ft],
    ):
        assert main([str(a) for a in argv]) == 0, argv
    return {"d": str(d), "pt": str(pt), "clf": str(ft / "model")}


def fingerprint(d: Path) -> dict[str, str]:
    """Every input file's content hash (the outputs under out/ and the models are not inputs)."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.relative_to(d).parts[0] not in ("out", "models")
    }


def fill(text: str, paths: dict[str, str]) -> str:
    """``{d}``, ``{pt}`` and ``{clf}`` filled in (``{text}`` and ``{mask}`` of templates kept)."""
    for key, value in paths.items():
        text = text.replace("{" + key + "}", value)
    return text


def run(case: Case, paths: dict[str, str]) -> tuple[int, str]:
    import contextlib
    import io

    argv = [fill(a, paths) for a in case.argv]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse: usage + one `lmvalue CMD: error:` line, exit 2
            code = stop.code if isinstance(stop.code, int) else 1
    return code, err.getvalue()


# --- the test -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    make_files(d)
    return build_models(d)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}: {c.input}" for c in CASES])
def test_bad_input_is_one_clear_message(case, paths):
    d = Path(paths["d"])
    before = fingerprint(d)
    code, err = run(case, paths)
    assert_clear_error(code, err, case.command, contains=fill(case.contains, paths))
    assert fingerprint(d) == before, "an input file was changed"
    # the same command again: the same message, not "already exists" (nothing left blocks a retry)
    code2, err2 = run(case, paths)
    assert code2 == 2 and _message(err2, case.command) == _message(err, case.command), err2


def _message(err: str, command: str) -> str:
    return next(line for line in err.splitlines() if line.startswith(f"lmvalue {command}: error:"))


def test_the_encoding_flags_the_messages_name_work(paths):
    """evaluate and prompt gained --encoding: the fix their non-UTF-8 message names runs."""
    d = paths["d"]
    words = "pos=的,neg=了"  # words the tiny tokenizer knows
    for argv in (
        ["evaluate", "-m", paths["clf"], "--data", f"{d}/gb.csv", "--encoding", "gb18030"],
        ["prompt", "-m", paths["pt"], "--data", f"{d}/gb.csv", "--encoding", "gb18030", "--test-size", "40"]
        + ["--template", "{text}总之很{mask}。", "--verbalizer", words],
    ):
        code, err = run(Case(argv[0], "works", tuple(argv)), {})
        assert code == 0, err


# --- docs/errors.md -------------------------------------------------------------------------------


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_table(out: Path) -> int:
    """Run every case and write docs/errors.md's table; returns the number of cases not exit 2."""
    import os
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_files(d)
        paths = build_models(d)
        rows, bad = [], 0
        for case in CASES:
            code, err = run(case, paths)
            bad += code != 2
            lines = err.splitlines()
            first = [i for i, line in enumerate(lines) if line.startswith(f"lmvalue {case.command}: error:")]
            if first:  # the message line and the list items of a multi-line message
                i = first[0]
                items = [line.strip() for line in lines[i + 1 :] if line.startswith("  - ")]
                message = " ".join([lines[i].split(": error: ", 1)[1], *items])
            else:
                message = lines[-1] if lines else "(no message)"
            message = message.replace(tmp, "…")
            args = " ".join(
                a.replace("{d}/", "").replace("{pt}", "PRETRAINED").replace("{clf}", "CLASSIFIER")
                for a in case.argv[1:]
            )
            for common in (PT, PT[:-4], FT, VAL):  # the tiny-model settings every case shares
                args = args.replace(" ".join(common), "…")
            rows.append(
                f"| `{case.command}` | {_cell(case.input, 60)} (`{_cell(args, 120)}`) | {_cell(message)} | {code} |"
            )
    text = out.read_text(encoding="utf-8")
    start, end = "<!-- cases: start -->", "<!-- cases: end -->"
    table = "| command | input | message | exit |\n|---|---|---|---|\n" + "\n".join(rows)
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    out.write_text(f"{head}{start}\n{table}\n{end}{tail}", encoding="utf-8")
    return bad


if __name__ == "__main__":
    sys.exit(min(1, write_table(ROOT / "docs" / "errors.md")))
