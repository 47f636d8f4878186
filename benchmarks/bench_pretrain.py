"""Pretraining throughput: the standard Hugging Face recipe vs `lmvalue pretrain`, side by side.

    python benchmarks/bench_pretrain.py                    # demo:zh-reviews, mini preset, 30 timed steps
    python benchmarks/bench_pretrain.py --data corpus.txt --steps 50 --preset small

Both sides use the same model configuration (BERT `mini`: 4 layers, 256 hidden, 4 heads, 1024 FFN),
the same tokenizer (trained once here), the same texts, batch 32 x 128 tokens and AdamW. The HF side
is `run_mlm.py`'s recipe: `datasets.map` tokenization, `group_texts` into 128-token blocks,
`DataCollatorForLanguageModeling(mlm_probability=0.15)`, `Trainer`. Both are timed over the same
number of optimizer steps after the same warm-up, and report real (non-padding) tokens/s and
model-FLOPs utilisation against this machine's fp32 matmul peak, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import torch  # noqa: E402


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    """Measured fp32 matmul FLOP/s on this machine (best of several runs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        dt = time.perf_counter() - t0
        best = max(best, 2 * n**3 * reps / dt)
    return best


def model_flops_per_token(cfg, seq: int) -> float:
    """Training FLOPs per token of a BERT MLM (dense output head, as MFU is usually counted):
    6 x (non-embedding params + output projection) + attention scores 12 x layers x hidden x seq."""
    h, L, ffn, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    per_layer = 4 * h * h + 2 * h * ffn
    return 6 * (L * per_layer + h * h + h * V) + 12 * L * h * seq


class StepTimer:
    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.t0 = self.t1 = None

    def mark(self, done_steps: int):
        if done_steps == self.warmup:
            self.t0 = time.perf_counter()
        if done_steps == self.warmup + self.steps:
            self.t1 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


def bench_hf(texts, tok_dir, model_cfg, args, *, bf16: bool = False) -> dict:
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(tok_dir)
    ds = Dataset.from_dict({"text": texts})
    t0 = time.perf_counter()
    ds = ds.map(
        lambda b: tok(b["text"], return_special_tokens_mask=True), batched=True, remove_columns=["text"]
    )

    def group_texts(examples):  # as in transformers' examples/pytorch/language-modeling/run_mlm.py
        concatenated = {k: sum(examples[k], []) for k in examples}
        total = (len(concatenated["input_ids"]) // args.seq) * args.seq
        return {k: [t[i : i + args.seq] for i in range(0, total, args.seq)] for k, t in concatenated.items()}

    ds = ds.map(group_texts, batched=True)
    prep_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = BertForMaskedLM(model_cfg)
    timer = StepTimer(args.warmup, args.steps)

    class Timing(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            timer.mark(state.global_step)

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch,
            max_steps=args.warmup + args.steps,
            learning_rate=5e-4,
            weight_decay=0.01,
            warmup_steps=0,
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            bf16=bf16,
            dataloader_num_workers=0,
            seed=0,
        )
        collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
        Trainer(
            model=model, args=targs, train_dataset=ds, data_collator=collator, callbacks=[Timing()]
        ).train()
    tokens = args.steps * args.batch * args.seq  # group_texts blocks carry no padding
    return {"tokens_per_s": tokens / timer.seconds, "step_s": timer.seconds / args.steps, "prepare_s": prep_s}


def bench_lmvalue(source, tok_dir, args, extra: dict | None = None) -> dict:
    import lmvalue.pretraining as P
    from lmvalue.config import PretrainConfig, build_config

    timer = StepTimer(args.warmup, args.steps)
    original = P.train_loop

    def timed(**kw):
        return original(on_step=lambda m, s: timer.mark(s.step + 1), **kw)

    P.train_loop = timed
    try:
        with tempfile.TemporaryDirectory() as out:
            overrides = {
                "model.preset": args.preset,
                "model.tokenizer": str(tok_dir),
                "data.source": source,
                "data.block_size": args.seq,
                "data.max_docs": args.max_docs,
                "train.batch_size": args.batch,
                "train.max_steps": args.warmup + args.steps,
                "train.eval_every": 10**6,
                "train.checkpoints": False,
                "train.output_dir": str(Path(out) / "run"),
                "train.progress": False,
                "train.lr": 5e-4,
                **(extra or {}),
            }
            t0 = time.perf_counter()
            P.pretrain(build_config(PretrainConfig, overrides=overrides))
            total = time.perf_counter() - t0
    finally:
        P.train_loop = original
    tokens = args.steps * args.batch * args.seq  # packed blocks: every token is real
    return {"tokens_per_s": tokens / timer.seconds, "step_s": timer.seconds / args.steps, "run_s": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo:zh-reviews")
    p.add_argument("--preset", default="mini")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--no-ablation",
        action="store_true",
        help="skip the ablation rows (fp32; fp32 with the full output projection; SDPA attention; "
        "torch's dropout; both; no dropout)",
    )
    args = p.parse_args()

    from transformers import BertConfig

    from lmvalue.config import MODEL_PRESETS
    from lmvalue.data.sources import load_texts
    from lmvalue.tokenizer import load_tokenizer, train_tokenizer

    threads = torch.get_num_threads()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {threads} threads", flush=True)
    peak = matmul_peak()
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    texts = load_texts(args.data, max_docs=args.max_docs)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tok"
        train_tokenizer(iter(texts), tok_dir, vocab_size=args.vocab)
        tok = load_tokenizer(tok_dir)
        d = MODEL_PRESETS[args.preset]
        model_cfg = BertConfig(
            vocab_size=len(tok),
            hidden_size=d["hidden"],
            num_hidden_layers=d["num_layers"],
            num_attention_heads=d["heads"],
            intermediate_size=d["ffn"],
            max_position_embeddings=512,
        )
        fpt = model_flops_per_token(model_cfg, args.seq)
        print(
            f"model: BERT {args.preset}, vocab {len(tok)}, {fpt / 1e6:.1f} MFLOP per trained token",
            flush=True,
        )
        results = {}
        from lmvalue.loop import resolve_precision

        auto = resolve_precision("auto")
        print(f"lmvalue's precision=auto resolves to {auto} on this machine", flush=True)
        print("running the Hugging Face recipe ...", flush=True)
        results["hf_trainer"] = bench_hf(texts, tok_dir, model_cfg, args)
        if auto == "bf16" and not args.no_ablation:
            print("running the Hugging Face recipe with bf16=True ...", flush=True)
            results["hf_trainer, bf16=True"] = bench_hf(texts, tok_dir, model_cfg, args, bf16=True)
        print("running lmvalue pretrain ...", flush=True)
        results["lmvalue"] = bench_lmvalue(args.data, tok_dir, args)
        if not args.no_ablation:
            rows = {
                "lmvalue, fp32": {"train.precision": "fp32"},
                "lmvalue, fp32, full output projection": {
                    "train.precision": "fp32",
                    "objective.sparse_head": False,
                },
                "lmvalue, SDPA attention": {"train.fast_attention": False},
                "lmvalue, torch dropout": {"train.fast_dropout": False},
                "lmvalue, torch dropout, SDPA attention": {
                    "train.fast_dropout": False,
                    "train.fast_attention": False,
                },
                "lmvalue, dropout 0": {"model.dropout": 0.0},
            }
            for name, extra in rows.items():
                print(f"running {name} ...", flush=True)
                results[name] = bench_lmvalue(args.data, tok_dir, args, extra)
    print()
    width = max(len(n) for n in results) + 2
    print(f"{'pipeline':<{width}}{'tokens/s':>12}{'s/step':>10}{'MFU':>8}{'vs HF':>8}")
    base = results["hf_trainer"]["tokens_per_s"]
    for name, r in results.items():
        r["mfu"] = r["tokens_per_s"] * fpt / peak
        print(
            f"{name:<{width}}{r['tokens_per_s']:>12,.0f}{r['step_s']:>10.3f}{r['mfu']:>8.1%}"
            f"{r['tokens_per_s'] / base:>7.2f}x"
        )
    ratio = results["lmvalue"]["tokens_per_s"] / base
    print(f"\nlmvalue (defaults, {auto}) / HF recipe: {ratio:.2f}x real tokens/s (target >= 2.5x)")
    if "lmvalue, fp32" in results:
        print(f"lmvalue (fp32) / HF recipe: {results['lmvalue, fp32']['tokens_per_s'] / base:.2f}x")
    if "hf_trainer, bf16=True" in results:
        hf16 = results["hf_trainer, bf16=True"]["tokens_per_s"]
        print(
            f"lmvalue (defaults) / HF recipe with bf16=True: {results['lmvalue']['tokens_per_s'] / hf16:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_flops": peak, "ratio": ratio, **results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
