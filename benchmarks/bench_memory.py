"""Peak resident memory of `lmvalue pretrain` as the corpus grows, and tokenization throughput.

Builds corpora of the given sizes from the demo reviews (each line made unique by a running
number), then runs `lmvalue pretrain` (mini preset, a fixed tokenizer, a few steps) on each,
twice: the first run tokenizes into an empty token cache (throughput in MB/s), the second reads
the cache. Peak RSS of the whole process tree is sampled every 50 ms.

    python benchmarks/bench_memory.py                 # 10 MB and 200 MB
    python benchmarks/bench_memory.py --sizes 10,50   # quicker

Not part of the test suite. Needs a quiet machine for the MB/s figure to mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil


def build_corpus(path: Path, mb: float) -> float:
    from lmvalue.data.sources import iter_texts

    reviews = list(iter_texts("demo:zh-reviews"))
    target = int(mb * 1e6)
    written = i = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            line = f"{i} {reviews[i % len(reviews)]}\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            i += 1
    return written / 1e6


def peak_rss(cmd: list[str], env: dict) -> tuple[int, float, int]:
    """(exit code, wall seconds, peak RSS in bytes of the process and its children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    top = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [top] + top.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode()[-3000:])
    return proc.returncode, time.perf_counter() - t0, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,200", help="corpus sizes in MB, comma-separated")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workdir", default="/tmp/lmvalue-bench-memory")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work / "cache", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    tok = work / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        from lmvalue.data.sources import iter_texts
        from lmvalue.tokenizer import train_tokenizer

        train_tokenizer(iter_texts("demo:zh-reviews"), tok, vocab_size=8000, overwrite=True)
    rows = []
    for size in [float(s) for s in args.sizes.split(",")]:
        corpus = work / f"corpus-{size:g}mb.txt"
        actual = build_corpus(corpus, size) if not corpus.is_file() else corpus.stat().st_size / 1e6
        for attempt in ("tokenize", "cached"):
            out = work / f"run-{size:g}-{attempt}"
            cmd = [
                sys.executable, "-m", "lmvalue.cli", "pretrain",
                "--model.preset", "mini", "--model.tokenizer", str(tok),
                "--data.source", str(corpus), "--data.cache_dir", str(work / "cache"),
                "--train.max_steps", str(args.steps), "--train.eval_every", str(args.steps),
                "--train.checkpoints", "false", "--train.progress", "false",
                "--train.output_dir", str(out), "--train.overwrite", "true",
            ]  # fmt: skip
            rc, wall, peak = peak_rss(cmd, env)
            if rc:
                raise SystemExit(f"pretrain failed on {corpus} (exit {rc})")
            data = json.loads((out / "metrics.json").read_text())["data"]
            rows.append(
                {
                    "corpus_mb": round(actual, 1),
                    "run": attempt,
                    "cache": data.get("token_cache"),
                    "tokenize_mb_per_s": data.get("tokenize_mb_per_s") if attempt == "tokenize" else None,
                    "tokens": data["tokens"],
                    "peak_rss_mb": round(peak / 2**20, 1),
                    "wall_s": round(wall, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print("\ncorpus MB | run      | cache   | tokenize MB/s | tokens      | peak RSS MB | wall s")
    for r in rows:
        mbs = f"{r['tokenize_mb_per_s']:.1f}" if r["tokenize_mb_per_s"] else "-"
        print(
            f"{r['corpus_mb']:9.1f} | {r['run']:8s} | {r['cache']:7s} | {mbs:>13s} | {r['tokens']:11,d} | "
            f"{r['peak_rss_mb']:11.1f} | {r['wall_s']:6.1f}"
        )
    by = {(r["corpus_mb"], r["run"]): r["peak_rss_mb"] for r in rows}
    sizes = sorted({r["corpus_mb"] for r in rows})
    if len(sizes) > 1:
        for run in ("tokenize", "cached"):
            lo, hi = by[(sizes[0], run)], by[(sizes[-1], run)]
            print(f"peak RSS {run}: {lo:.0f} MB -> {hi:.0f} MB ({(hi / lo - 1) * 100:+.0f}%)")


if __name__ == "__main__":
    main()
