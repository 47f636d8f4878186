"""Pretraining throughput: the standard Hugging Face recipe vs `lmvalue pretrain`, side by side.

    python benchmarks/bench_pretrain.py                    # demo:zh-reviews, mini preset, 30 timed steps
    python benchmarks/bench_pretrain.py --data corpus.txt --steps 50 --preset small

Both sides use the same model configuration (BERT `mini`: 4 layers, 256 hidden, 4 heads, 1024 FFN),
the same tokenizer (trained once here), the same texts, batch 32 x 128 tokens and AdamW. The HF side
is `run_mlm.py`'s recipe: `datasets.map` tokenization, `group_texts` into 128-token blocks,
`DataCollatorForLanguageModeling(mlm_probability=0.15)`, `Trainer`. Both are timed over the same
number of optimizer steps after the same warm-up, and report real (non-padding) tokens/s and
model-FLOPs utilisation against this machine's matmul peak at each row's precision (fp32, bf16),
measured in the same run: *useful* MFU counts the dense model's FLOPs, *hardware* MFU the FLOPs
actually computed (lmvalue's sparse head projects only the masked positions). The comparison leads
with equal precision (HF fp32 vs lmvalue fp32, HF `bf16=True` vs lmvalue bf16).

    python benchmarks/bench_pretrain.py --device cuda --preset base --seq 128 --compile   # a GPU
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


def matmul_peak(
    dtype: torch.dtype = torch.float32, device: str = "cpu", n: int = 1024, reps: int = 20
) -> float:
    """Measured matmul FLOP/s at ``dtype`` on ``device`` (best of several runs)."""
    if device == "cuda":
        n, reps = 8192, 50
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    sync()
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        dt = time.perf_counter() - t0
        best = max(best, 2 * n**3 * reps / dt)
    return best


def model_flops_per_token(cfg, seq: int, head_share: float = 1.0) -> float:
    """Training FLOPs per token of a BERT MLM: 6 x (non-embedding params + the MLM head's transform
    and output projection) + attention scores 12 x layers x hidden x seq.

    ``head_share=1`` is the dense head, as MFU is usually counted (the *useful* FLOPs); a sparse
    head computes the head at the masked positions only (``head_share`` = the mask rate): the FLOPs
    the hardware actually does."""
    h, L, ffn, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    per_layer = 4 * h * h + 2 * h * ffn
    return 6 * (L * per_layer + head_share * (h * h + h * V)) + 12 * L * h * seq


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
    """The run_mlm.py recipe; ``bf16=True`` is the Trainer's own mixed precision (autocast)."""
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
            use_cpu=args.device == "cpu",
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
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where both sides train (cuda: bf16 autocast, fused AdamW, pinned memory)",
    )
    p.add_argument("--compile", action="store_true", help="add a row with train.compile=true")
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--no-ablation",
        action="store_true",
        help="skip the ablation rows (fp32 with the full output projection; SDPA attention; "
        "torch's dropout; both; no dropout)",
    )
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")

    from transformers import BertConfig

    from lmvalue.config import MODEL_PRESETS
    from lmvalue.data.sources import load_texts
    from lmvalue.loop import cpu_has_native_bf16
    from lmvalue.tokenizer import load_tokenizer, train_tokenizer

    threads = torch.get_num_threads()
    where = (
        torch.cuda.get_device_name(0)
        if args.device == "cuda"
        else f"{os.cpu_count()} CPUs, {threads} threads"
    )
    print(f"machine: {where}, torch {torch.__version__}", flush=True)
    bf16_ok = torch.cuda.is_bf16_supported() if args.device == "cuda" else cpu_has_native_bf16()
    peaks = {"fp32": matmul_peak(torch.float32, args.device)}
    if bf16_ok:
        peaks["bf16"] = matmul_peak(torch.bfloat16, args.device)
    print(
        "measured matmul peak: " + ", ".join(f"{k} {v / 1e9:,.1f} GFLOP/s" for k, v in peaks.items()),
        flush=True,
    )
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
        dense = model_flops_per_token(model_cfg, args.seq)
        sparse = model_flops_per_token(model_cfg, args.seq, head_share=0.15)
        print(
            f"model: BERT {args.preset}, vocab {len(tok)}, {dense / 1e6:.1f} MFLOP per trained token "
            f"(dense head; {sparse / 1e6:.1f} with the head at the 15% masked positions only)",
            flush=True,
        )
        # name -> (runner, precision, FLOPs the hardware computes per token)
        plan = {"HF recipe, fp32": (lambda: bench_hf(texts, tok_dir, model_cfg, args), "fp32", dense)}
        plan["lmvalue, fp32"] = (
            lambda: bench_lmvalue(args.data, tok_dir, args, {"train.precision": "fp32"}),
            "fp32",
            sparse,
        )
        if bf16_ok:
            plan["HF recipe, bf16=True"] = (
                lambda: bench_hf(texts, tok_dir, model_cfg, args, bf16=True),
                "bf16",
                dense,
            )
            plan["lmvalue, bf16"] = (
                lambda: bench_lmvalue(args.data, tok_dir, args, {"train.precision": "bf16"}),
                "bf16",
                sparse,
            )
        if args.compile:
            best = "bf16" if bf16_ok else "fp32"
            plan[f"lmvalue, {best}, compiled"] = (
                lambda: bench_lmvalue(
                    args.data, tok_dir, args, {"train.precision": best, "train.compile": True}
                ),
                best,
                sparse,
            )
        if not args.no_ablation:
            extra_rows = {
                "lmvalue, fp32, full output projection": ({"train.precision": "fp32", "objective.sparse_head": False}, "fp32", dense),
                "lmvalue, SDPA attention": ({"train.fast_attention": False}, None, sparse),
                "lmvalue, torch dropout": ({"train.fast_dropout": False}, None, sparse),
                "lmvalue, torch dropout, SDPA attention": ({"train.fast_dropout": False, "train.fast_attention": False}, None, sparse),
                "lmvalue, dropout 0": ({"model.dropout": 0.0}, None, sparse),
            }  # fmt: skip
            auto = "bf16" if bf16_ok else "fp32"
            for name, (extra, precision, flops) in extra_rows.items():
                plan[name] = (
                    lambda extra=extra: bench_lmvalue(args.data, tok_dir, args, extra),
                    precision or auto,
                    flops,
                )
        results = {}
        for name, (runner, precision, flops) in plan.items():
            print(f"running {name} ...", flush=True)
            r = runner()
            r["precision"] = precision
            r["useful_mfu"] = r["tokens_per_s"] * dense / peaks[precision]
            r["hardware_mfu"] = r["tokens_per_s"] * flops / peaks[precision]
            results[name] = r
    print()
    width = max(len(n) for n in results) + 2
    print(
        f"{'pipeline':<{width}}{'tokens/s':>12}{'s/step':>10}{'useful MFU':>12}{'hw MFU':>9}{'vs HF same precision':>22}"
    )
    for name, r in results.items():
        ref = results.get(f"HF recipe, {'bf16=True' if r['precision'] == 'bf16' else 'fp32'}")
        r["vs_hf_same_precision"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None
        vs = f"{r['vs_hf_same_precision']:.2f}x" if ref else "-"
        print(
            f"{name:<{width}}{r['tokens_per_s']:>12,.0f}{r['step_s']:>10.3f}{r['useful_mfu']:>12.1%}"
            f"{r['hardware_mfu']:>9.1%}{vs:>22}"
        )
    print("\nMFU against the measured matmul peak at each row's precision; useful: the dense model's FLOPs,")
    print("hw: the FLOPs computed (the sparse head computes the output projection at masked positions only).")
    fp = results["lmvalue, fp32"]["tokens_per_s"] / results["HF recipe, fp32"]["tokens_per_s"]
    print(f"equal precision, fp32: lmvalue / HF recipe = {fp:.2f}x (target >= 2.5x)")
    if "lmvalue, bf16" in results:
        bf = results["lmvalue, bf16"]["tokens_per_s"] / results["HF recipe, bf16=True"]["tokens_per_s"]
        print(f"equal precision, bf16: lmvalue / HF recipe with bf16=True = {bf:.2f}x (target >= 2.5x)")
        dd = results["lmvalue, bf16"]["tokens_per_s"] / results["HF recipe, fp32"]["tokens_per_s"]
        print(f"defaults vs defaults: lmvalue (bf16) / HF recipe (fp32) = {dd:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"peaks": peaks, **results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
