"""Fine-tuning and prediction throughput: Hugging Face `Trainer` / `pipeline` vs lmvalue, side by side.

    python benchmarks/bench_finetune.py                 # demo:zh-reviews, mini preset
    python benchmarks/bench_finetune.py --steps 50 --predict 4000

Fine-tuning: the same BERT `mini` classifier (random init, same tokenizer), batch 16, inputs cut to
128 tokens, AdamW; HF side `Trainer` + `DataCollatorWithPadding` on a `datasets.map`-tokenized set,
lmvalue side `lmvalue finetune` (length-bucketed batches padded to their longest). Both are timed
over the same number of optimizer steps after a warm-up; examples/s and real (non-padding) tokens/s.

Prediction: the fine-tuned model folder through `transformers.pipeline("text-classification")`
(batch 64) vs lmvalue's predictor (`TaskModel.predict`, length-sorted batches of 64), on the same
test reviews; examples/s.

Not part of the test suite; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import torch  # noqa: E402
from bench_pretrain import StepTimer  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def mean_tokens(texts, tok, max_length: int) -> float:
    enc = tok(texts, truncation=True, max_length=max_length)
    return sum(len(x) for x in enc["input_ids"]) / len(texts)


def bench_hf_finetune(train, tok_dir, preset, args, *, bf16: bool = False) -> dict:
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(tok_dir)
    labels = sorted({e["label"] for e in train})
    ds = Dataset.from_list([{"text": e["text"], "label": labels.index(e["label"])} for e in train])
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=args.max_length), batched=True)
    ds = ds.remove_columns(["text"])
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=preset["hidden"],
            num_hidden_layers=preset["num_layers"],
            num_attention_heads=preset["heads"],
            intermediate_size=preset["ffn"],
            num_labels=len(labels),
        )
    )
    timer = StepTimer(args.warmup, args.steps)

    class Timing(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            timer.mark(state.global_step)

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch,
            max_steps=args.warmup + args.steps,
            learning_rate=1e-4,
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            bf16=bf16,
            seed=0,
        )
        Trainer(
            model=model,
            args=targs,
            train_dataset=ds,
            data_collator=DataCollatorWithPadding(tok),
            callbacks=[Timing()],
        ).train()
    return {"examples_per_s": args.steps * args.batch / timer.seconds}


def bench_lmvalue_finetune(train, test, tok_dir, args, out: Path, extra: dict | None = None) -> dict:
    import lmvalue.finetuning as F
    from lmvalue.config import FinetuneConfig, build_config

    timer = StepTimer(args.warmup, args.steps)
    original = F.train_loop

    def timed(**kw):
        inner = kw.pop("on_step", None)

        def on_step(m, s):
            if inner:
                inner(m, s)
            timer.mark(s.step + 1)

        return original(on_step=on_step, **kw)

    F.train_loop = timed
    try:
        overrides = {
            "model.preset": args.preset,
            "model.tokenizer": str(tok_dir),
            "model.from_scratch": True,
            "data.max_length": args.max_length,
            "budget.dev_fraction": 0.0,
            "train.batch_size": args.batch,
            "train.epochs": None,
            "train.max_steps": args.warmup + args.steps,
            "train.min_steps": 1,
            "train.evals": 1,
            "train.select_best": False,
            "train.lr": 1e-4,
            "train.output_dir": str(out),
            "train.progress": False,
            **(extra or {}),
        }
        F.finetune(
            build_config(FinetuneConfig, overrides=overrides), train_examples=train, test_examples=test
        )
    finally:
        F.train_loop = original
    return {"examples_per_s": args.steps * args.batch / timer.seconds}


def bench_predict(model_dir: Path, texts: list[str], args) -> dict:
    from transformers import pipeline

    from lmvalue.inference import load_task_model

    pipe = pipeline("text-classification", model=str(model_dir), device="cpu")
    pipe(texts[:64], batch_size=64, truncation=True, max_length=args.max_length)  # warm-up
    t0 = time.perf_counter()
    pipe(texts, batch_size=64, truncation=True, max_length=args.max_length)
    hf = len(texts) / (time.perf_counter() - t0)
    task = load_task_model(model_dir)
    task.batch_size = 64
    task.predict([{"text": t} for t in texts[:64]])  # warm-up
    t0 = time.perf_counter()
    task.predict([{"text": t} for t in texts])
    ours = len(texts) / (time.perf_counter() - t0)
    return {"hf_pipeline": hf, "lmvalue": ours}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mini")
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--predict", type=int, default=2000, help="test reviews to predict")
    args = p.parse_args()

    from lmvalue.config import MODEL_PRESETS
    from lmvalue.data.budget import dedupe
    from lmvalue.data.sources import iter_texts, load_labeled
    from lmvalue.tokenizer import load_tokenizer, train_tokenizer

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    examples, _ = dedupe(load_labeled("demo:zh-reviews"))
    import random

    random.Random(0).shuffle(examples)
    test, train = examples[: args.predict], examples[args.predict :]
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tok"
        train_tokenizer(iter_texts("demo:zh-reviews"), tok_dir, vocab_size=8000)
        tok = load_tokenizer(tok_dir)
        per_ex = mean_tokens([e["text"] for e in train[:5000]], tok, args.max_length)
        print(f"mean real tokens per training example: {per_ex:.1f}")
        from lmvalue.loop import resolve_precision

        auto = resolve_precision("auto")
        print(f"lmvalue's precision=auto resolves to {auto} on this machine", flush=True)
        rows = {}
        print("fine-tuning: Hugging Face Trainer ...", flush=True)
        rows["HF Trainer"] = bench_hf_finetune(train, tok_dir, MODEL_PRESETS[args.preset], args)
        if auto == "bf16":
            print("fine-tuning: Hugging Face Trainer, bf16=True ...", flush=True)
            rows["HF Trainer, bf16=True"] = bench_hf_finetune(
                train, tok_dir, MODEL_PRESETS[args.preset], args, bf16=True
            )
        print(f"fine-tuning: lmvalue finetune (defaults: {auto}) ...", flush=True)
        rows["lmvalue finetune"] = bench_lmvalue_finetune(train, test, tok_dir, args, Path(tmp) / "ft")
        if auto != "fp32":
            print("fine-tuning: lmvalue finetune, fp32 ...", flush=True)
            rows["lmvalue finetune, fp32"] = bench_lmvalue_finetune(
                train, test, tok_dir, args, Path(tmp) / "ft-fp32", {"train.precision": "fp32"}
            )
        print("prediction: pipeline vs lmvalue ...", flush=True)
        pred = bench_predict(Path(tmp) / "ft" / "model", [e["text"] for e in test], args)
    print()
    print(f"{'fine-tuning':<26}{'examples/s':>12}{'tokens/s':>12}{'vs HF':>8}")
    base = rows["HF Trainer"]["examples_per_s"]
    for name, r in rows.items():
        print(
            f"{name:<26}{r['examples_per_s']:>12.1f}{r['examples_per_s'] * per_ex:>12,.0f}"
            f"{r['examples_per_s'] / base:>7.2f}x"
        )
    ours = rows["lmvalue finetune"]["examples_per_s"]
    print(f"lmvalue (defaults, {auto}) / HF Trainer: {ours / base:.2f}x (target >= 1.5x)")
    if "HF Trainer, bf16=True" in rows:
        print(
            f"lmvalue (defaults) / HF Trainer with bf16=True: {ours / rows['HF Trainer, bf16=True']['examples_per_s']:.2f}x"
        )
    print()
    print(f"{'prediction':<22}{'examples/s':>12}")
    print(f"{'HF pipeline':<22}{pred['hf_pipeline']:>12.1f}")
    print(f"{'lmvalue predict':<22}{pred['lmvalue']:>12.1f}")
    print(f"lmvalue / pipeline: {pred['lmvalue'] / pred['hf_pipeline']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    sys.exit(main())
