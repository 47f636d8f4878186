"""Peak resident memory of `lmvalue pretrain` as the corpus grows, and tokenization throughput.

Builds corpora of the given sizes from the demo reviews (each line made unique by a running
number), then runs `lmvalue pretrain` (mini preset, a fixed tokenizer, a few steps) on each,
twice per objective (mlm; wwm, which segments with jieba; mlm+sop, which cuts sentence pairs):
the first run tokenizes (and annotates) into an empty token cache (throughput in MB/s), the second
reads the cache. Peak RSS and PSS of the whole process tree are sampled every 50 ms. Then wwm's
segmentation + tokenization throughput at the largest size with 1 and 2 worker processes.

    python benchmarks/bench_memory.py                 # 10 MB and 200 MB, mlm, wwm and sop
    python benchmarks/bench_memory.py --sizes 10,50 --objectives wwm --workers 2   # quicker

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


def peak_rss(cmd: list[str], env: dict) -> tuple[int, float, int, int]:
    """(exit code, wall seconds, peak RSS and peak PSS in bytes of the process and its children).

    RSS counts the pages forked worker processes share with their parent once per process; PSS
    splits each shared page between the processes that map it, so it is the fair figure for a
    process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    top = psutil.Process(proc.pid)
    peak = peak_pss = 0
    while proc.poll() is None:
        try:
            procs = [top] + top.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs))
            peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in procs))
        except (psutil.Error, AttributeError):
            pass
        time.sleep(0.05)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode()[-3000:])
    return proc.returncode, time.perf_counter() - t0, peak, peak_pss


OBJECTIVES = {"mlm": "mlm", "wwm": "wwm", "sop": "mlm,sop"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,200", help="corpus sizes in MB, comma-separated")
    ap.add_argument("--objectives", default="mlm,wwm,sop", help=f"any of {', '.join(OBJECTIVES)}")
    ap.add_argument(
        "--workers",
        default="1,2",
        help="tokenize workers for the wwm throughput rows at the largest size (data.tokenize_workers)",
    )
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
    sizes = [float(s) for s in args.sizes.split(",")]
    objectives = args.objectives.split(",")
    rows = []

    def run(size: float, objective: str, attempt: str, workers: int = 0, cache: Path | None = None) -> dict:
        corpus = work / f"corpus-{size:g}mb.txt"
        actual = build_corpus(corpus, size) if not corpus.is_file() else corpus.stat().st_size / 1e6
        out = work / f"run-{size:g}-{objective}-{attempt}"
        cmd = [
            sys.executable, "-m", "lmvalue.cli", "pretrain",
            "--model.preset", "mini", "--model.tokenizer", str(tok),
            "--objective.names", OBJECTIVES[objective],
            "--data.source", str(corpus), "--data.cache_dir", str(cache or work / "cache"),
            "--data.tokenize_workers", str(workers),
            "--train.max_steps", str(args.steps), "--train.eval_every", str(args.steps),
            "--train.checkpoints", "false", "--train.progress", "false",
            "--train.output_dir", str(out), "--train.overwrite", "true",
        ]  # fmt: skip
        rc, wall, peak, pss = peak_rss(cmd, env)
        if rc:
            raise SystemExit(f"pretrain failed on {corpus} (exit {rc})")
        data = json.loads((out / "metrics.json").read_text())["data"]
        row = {
            "corpus_mb": round(actual, 1),
            "objective": objective,
            "run": attempt,
            "workers": workers or "auto",
            "cache": data.get("token_cache"),
            "tokenize_mb_per_s": data.get("tokenize_mb_per_s") if data.get("token_cache") != "hit" else None,
            "prepare_s": data.get("tokenize_s"),
            "tokens": data["tokens"],
            "peak_rss_mb": round(peak / 2**20, 1),
            "peak_pss_mb": round(pss / 2**20, 1),
            "wall_s": round(wall, 1),
        }
        print(json.dumps(row), flush=True)
        return row

    for objective in objectives:
        for size in sizes:
            for attempt in ("tokenize", "cached"):
                rows.append(run(size, objective, attempt))
    throughput = []
    if "wwm" in objectives:
        for w in [int(x) for x in args.workers.split(",") if x]:
            cache = work / f"cache-workers-{w}"
            shutil.rmtree(cache, ignore_errors=True)
            for attempt in ("tokenize", "cached"):
                throughput.append(run(sizes[-1], "wwm", attempt, workers=w, cache=cache))
            shutil.rmtree(cache, ignore_errors=True)

    print(
        "\nobjective | corpus MB | run      | cache   | tokenize MB/s | tokens      | peak RSS MB | peak PSS MB | wall s"
    )
    for r in rows:
        mbs = f"{r['tokenize_mb_per_s']:.1f}" if r["tokenize_mb_per_s"] else "-"
        print(
            f"{r['objective']:9s} | {r['corpus_mb']:9.1f} | {r['run']:8s} | {r['cache']:7s} | {mbs:>13s} | "
            f"{r['tokens']:11,d} | {r['peak_rss_mb']:11.1f} | {r['peak_pss_mb']:11.1f} | {r['wall_s']:6.1f}"
        )
    for objective in objectives:
        by = {(r["corpus_mb"], r["run"]): r for r in rows if r["objective"] == objective}
        mbs = sorted({r["corpus_mb"] for r in rows})
        if len(mbs) > 1:
            for attempt in ("tokenize", "cached"):
                lo, hi = by[(mbs[0], attempt)], by[(mbs[-1], attempt)]
                print(
                    f"{objective} peak {attempt}: RSS {lo['peak_rss_mb']:.0f} -> {hi['peak_rss_mb']:.0f} MB "
                    f"({hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}x), PSS {lo['peak_pss_mb']:.0f} -> "
                    f"{hi['peak_pss_mb']:.0f} MB ({hi['peak_pss_mb'] / lo['peak_pss_mb']:.2f}x)"
                )
    if throughput:
        print("\nwwm segmentation + tokenization at", throughput[0]["corpus_mb"], "MB")
        print("workers | run      | MB/s (segment + tokenize) | data preparation s | peak PSS MB")
        for r in throughput:
            mbs = f"{r['tokenize_mb_per_s']:.2f}" if r["tokenize_mb_per_s"] else "-"
            print(
                f"{r['workers']!s:7s} | {r['run']:8s} | {mbs:>25s} | {r['prepare_s']:18.1f} | {r['peak_pss_mb']:.0f}"
            )


if __name__ == "__main__":
    main()
