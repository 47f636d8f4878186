"""Cell runners for tests/test_scaling.py, in a module of their own so that worker processes (spawn)
and Ray tasks import them by name. Each appends ``arm,budget,seed`` to ``<study>/../cells.log``."""

import os
import signal
from pathlib import Path


def _log(study, arm, budget, seed) -> int:
    path = Path(study.output_dir).parent / "cells.log"
    with open(path, "a") as f:
        f.write(f"{arm.name},{budget},{seed}\n")
    return sum(1 for _ in open(path))


def score(arm, budget, seed) -> float:
    return 0.5 + budget / 1000 + seed / 100 + (0.1 if arm.name == "tfidf" else 0)


def fake(arm, state, train, test, budget, seed, study):
    _log(study, arm, budget, seed)
    return {"metrics": {"accuracy": score(arm, budget, seed)}}


def kill_worker(arm, state, train, test, budget, seed, study):
    """SIGKILLs its own process: the first time in cell (tfidf, 16, 0), every time in (tfidf, 16, 1)."""
    _log(study, arm, budget, seed)
    mark = Path(study.output_dir).parent / f"killed-{arm.name}-{budget}-{seed}"
    if arm.name == "tfidf" and budget == 16 and (seed == 1 or not mark.exists()):
        mark.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return {"metrics": {"accuracy": score(arm, budget, seed)}}


def kill_driver(arm, state, train, test, budget, seed, study):
    """The 4th cell to start SIGKILLs the driver (this worker's parent) and then itself."""
    n = _log(study, arm, budget, seed)
    if n == 4 and not (Path(study.output_dir).parent / "resumed").exists():
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    return {"metrics": {"accuracy": score(arm, budget, seed)}}


def devices(arm, state, train, test, budget, seed, study):
    """Which GPU the cell's process sees."""
    import torch

    return {
        "metrics": {
            "accuracy": 0.5,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device_count": torch.cuda.device_count(),
            "pid": os.getpid(),
        }
    }
