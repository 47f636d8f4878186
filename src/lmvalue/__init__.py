"""lmvalue: pretrain on your unlabeled text, transfer to your task, and measure what it was worth.

The public API, loaded on first use (``import lmvalue`` stays fast and imports no torch)::

    from lmvalue import PretrainConfig, FinetuneConfig, StudyConfig, build_config
    from lmvalue import pretrain, finetune, finetune_config, run_study, load_task_model

    cfg = build_config(PretrainConfig, overrides={"data.source": "demo:zh-reviews", "train.max_steps": 500})
    pretrain(cfg)
    task = load_task_model("runs/ft/model")  # predict / score with lmvalue.inference
"""

from __future__ import annotations

import importlib

__version__ = "0.3.0"

# public name -> the module that defines it (each layer's own home; see tests/test_structure.py)
_API = {
    "PretrainConfig": "lmvalue.config",
    "FinetuneConfig": "lmvalue.config",
    "StudyConfig": "lmvalue.config",
    "ContinualConfig": "lmvalue.config",
    "build_config": "lmvalue.config",
    "pretrain": "lmvalue.pretraining",
    "finetune": "lmvalue.finetuning",
    "finetune_config": "lmvalue.finetuning",
    "load_task_model": "lmvalue.inference",
    "run_study": "lmvalue.value.study",
    "run_continual": "lmvalue.continual",
    "LmvalueError": "lmvalue.errors",
    "ConfigError": "lmvalue.errors",
    "DataError": "lmvalue.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'lmvalue' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
