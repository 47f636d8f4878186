"""The cell phase of the demo study under each executor, side by side in one run (docs/scaling.md).

    python benchmarks/bench_scaling.py [--pretrain-steps 1000] [--seeds 3] [--budgets ...] [--out runs/bench-scaling]

1. prepares the demo study's arms once (`lmvalue demo` settings, ``--pretrain-steps`` of pretraining):
   a study with one cell (the first budget, seed 0) per arm;
2. copies that study three times, drops the copies' cells (the arms' pretraining stays recorded), and
   resumes each copy with the demo's budgets and ``--seeds`` under ``local --workers 1`` (2 threads),
   ``local --workers 2`` (1 thread each) and ``ray`` (a local runtime with 2 CPUs, 1 per cell);
3. prints the wall time of each resume (data loading, cells, report: the arms are already prepared),
   the sum of the cells' own wall times, and whether the three gave the same scores.
"""

import argparse
import json
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

from lmvalue.value.study import demo_config, run_study


def cells(study: Path) -> dict:
    db = sqlite3.connect(study / "results.sqlite")
    try:
        rows = db.execute("SELECT arm, budget, seed, status, score, wall_s FROM cells").fetchall()
    finally:
        db.close()
    return {(a, b, s): {"status": st, "score": sc, "wall_s": w} for a, b, s, st, sc, w in rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrain-steps", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budgets", type=int, nargs="+", default=None, help="default: the demo's")
    p.add_argument("--out", default="runs/bench-scaling")
    p.add_argument("--only", nargs="*", default=None, help="run only these executors (workers1 workers2 ray)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = Path(args.out).resolve()
    base = root / "prepared"
    if not (base / "results.sqlite").is_file():
        cfg = demo_config(str(base), pretrain_steps=args.pretrain_steps)
        cfg.budgets, cfg.seeds = cfg.budgets[:1], 1
        t0 = time.perf_counter()
        run_study(cfg)
        print(f"prepared the arms (and {len(cfg.arms)} cells) in {time.perf_counter() - t0:.0f}s: {base}")
    runs = {
        "workers1": {"workers": 1},
        "workers2": {"workers": 2},
        "ray": {"executor": "ray"},
    }
    results = {}
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    for name, settings in runs.items():
        if args.only and name not in args.only:
            continue
        study = root / name
        shutil.rmtree(study, ignore_errors=True)
        shutil.copytree(base, study)
        db = sqlite3.connect(study / "results.sqlite")
        db.execute("DELETE FROM cells")
        db.commit()
        db.close()
        cfg = demo_config(str(study), resume=True, pretrain_steps=args.pretrain_steps)
        cfg.seeds = args.seeds
        cfg.budgets = args.budgets or cfg.budgets
        for key, value in settings.items():
            setattr(cfg, key, value)
        if name == "ray":
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        try:
            run_study(cfg)
        finally:
            if name == "ray":
                ray.shutdown()
        wall = time.perf_counter() - t0
        got = cells(study)
        results[name] = got
        done = sum(c["status"] == "done" for c in got.values())
        print(
            f"{name:9s} {len(got)} cells ({done} done) in {wall:6.1f}s wall; "
            f"sum of the cells' wall times {sum(c['wall_s'] for c in got.values()):6.1f}s; "
            f"load average after {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    names = list(results)
    for name in names[1:]:
        same = {k: v["score"] for k, v in results[name].items()} == {
            k: v["score"] for k, v in results[names[0]].items()
        }
        differ = [
            k
            for k in results[names[0]]
            if results[name].get(k, {}).get("score") != results[names[0]][k]["score"]
        ]
        print(
            f"{name} vs {names[0]}: same scores: {same}" + (f" (differ: {sorted(differ)})" if differ else "")
        )
    (root / "scores.json").write_text(
        json.dumps(
            {n: {",".join(map(str, k)): v for k, v in r.items()} for n, r in results.items()}, indent=1
        )
    )
    print(f"cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
