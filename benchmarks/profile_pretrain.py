"""Where a pretraining step's time goes: torch.profiler over `lmvalue pretrain` steps, by operator.

    python benchmarks/profile_pretrain.py [--preset mini] [--steps 12] [--precision bf16] [--top 15]

Profiles the training steps after a few warm-up steps (same settings as bench_pretrain.py: batch
32 x 128, demo:zh-reviews, a tokenizer trained here) and prints the operators by self CPU time, and
the share of the matmuls (mm, addmm, bmm, matmul, linear) in the total.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo:zh-reviews")
    p.add_argument("--preset", default="mini")
    p.add_argument("--steps", type=int, default=12, help="profiled steps (after 4 warm-up steps)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()

    import lmvalue.pretraining as P
    from lmvalue.config import PretrainConfig, build_config
    from lmvalue.data.sources import load_texts
    from lmvalue.tokenizer import train_tokenizer

    warmup = 4
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    original = P.train_loop

    def on_step(model, state):
        if state.step + 1 == warmup:
            prof.start()
        elif state.step + 1 == warmup + args.steps:
            prof.stop()

    P.train_loop = lambda **kw: original(on_step=on_step, **kw)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tok"
        train_tokenizer(iter(load_texts(args.data)), tok_dir, vocab_size=8000)
        overrides = {
            "model.preset": args.preset,
            "model.tokenizer": str(tok_dir),
            "data.source": args.data,
            "data.block_size": args.seq,
            "train.batch_size": args.batch,
            "train.max_steps": warmup + args.steps,
            "train.eval_every": 10**6,
            "train.checkpoints": False,
            "train.output_dir": str(Path(tmp) / "run"),
            "train.progress": False,
            "train.precision": args.precision,
        }
        P.pretrain(build_config(PretrainConfig, overrides=overrides))
    P.train_loop = original
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))
    matmul = sum(
        e.self_cpu_time_total
        for e in events
        if e.key.split("::")[-1] in ("mm", "addmm", "bmm", "matmul", "linear")
    )
    print(f"matmuls (mm, addmm, bmm): {matmul / total:.0%} of the self CPU time over {args.steps} steps")


if __name__ == "__main__":
    main()
