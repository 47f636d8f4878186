"""Run folders and atomic, resumable checkpoints.

Layout of a run folder::

    runs/x/
      config.yaml          resolved config of the run
      run.json             version, seed, status (running | finished | failed), times, command
      metrics.json         final and per-evaluation metrics
      tokenizer/           the tokenizer trained for this run (when one was trained)
      checkpoints/step-N/  Hugging Face folder (config.json, model.safetensors, tokenizer)
                           + training_state.pt (optimizer, RNG, data position) + rng_rank*.pt
      model/               the final model: a Hugging Face folder plain transformers loads
      tb/                  TensorBoard logs

A checkpoint is written to ``checkpoints/.tmp-step-N`` and renamed into place only when
complete, so a run killed at any moment leaves its last complete checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lmvalue.errors import CheckpointError, LmvalueError

STATE_FILE = "training_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def write_json_atomic(path: Path, data) -> None:
    from lmvalue.files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / STATE_FILE).is_file() and (Path(path) / "config.json").is_file()


class RunDir:
    """The output folder of one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    # -- status -------------------------------------------------------------------------------
    def status(self) -> str | None:
        run = self.path / "run.json"
        if not run.is_file():
            return None
        try:
            return read_json(run).get("status")
        except (OSError, ValueError):
            return "unknown"

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoints.is_dir():
            return None
        steps = []
        for child in self.checkpoints.iterdir():
            m = _STEP_DIR.match(child.name)
            if m and is_checkpoint(child):
                steps.append((int(m.group(1)), child))
        return max(steps)[1] if steps else None

    def prepare(self, *, resume: bool, overwrite: bool) -> Path | None:
        """Check the folder may be used; return the checkpoint to resume from (or None).

        Raises:
            CheckpointError: a finished or unfinished run is there and neither resume nor
                overwrite was asked for, or resume was asked for but there is no checkpoint.
        """
        from lmvalue.files import prepare_output_dir

        prepare_output_dir(self.path, create=False)  # a file, or under a file: one clear message
        exists = self.path.exists() and any(self.path.iterdir())
        status, ckpt = self.status(), self.latest_checkpoint()
        if resume:
            if not self.path.is_dir():
                raise CheckpointError(
                    f"cannot resume: {self.path} does not exist; drop --resume to start a new run"
                )
            if ckpt is None:
                if status in ("failed", "running", "interrupted"):
                    raise CheckpointError(
                        f"cannot resume: the run in {self.path} stopped before its first checkpoint, so there "
                        "is nothing to resume; run the same command without --resume to start it again"
                        + (" (with --overwrite)" if status == "running" else "")
                    )
                raise CheckpointError(
                    f"cannot resume: {self.path} is not a checkpoint folder of an lmvalue run "
                    f"(no {self.checkpoints.name}/step-N/{STATE_FILE} in it); drop --resume to start a new run"
                )
            if status == "finished":
                raise CheckpointError(
                    f"cannot resume: the run in {self.path} already finished (see {self.path / 'metrics.json'}); "
                    "raise train.max_steps and use --overwrite to train again from scratch, or start a new "
                    "run from it with model.init_from"
                )
            for tmp in self.checkpoints.glob(".tmp-*"):  # half-written by the killed run
                shutil.rmtree(tmp, ignore_errors=True)
            return ckpt
        # a run that stopped before its first checkpoint holds nothing worth keeping: start again
        failed_start = status in ("failed", "interrupted") and ckpt is None
        if exists and not overwrite and not failed_start:
            if status == "finished":
                what, hint = "a finished run", ""
            elif ckpt is None:
                what, hint = "an unfinished run that never saved a checkpoint (killed early?)", ""
            else:
                what, hint = "files (an unfinished run?)", " --resume to continue it, or"
            raise CheckpointError(
                f"output folder {self.path} already holds {what}; nothing was changed. "
                f"Choose another train.output_dir (-o), or pass{hint} --overwrite to replace it"
            )
        if exists and (overwrite or failed_start):
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        return None

    # -- writing ------------------------------------------------------------------------------
    def new_checkpoint_dir(self, step: int) -> Path:
        tmp = self.checkpoints / f".tmp-step-{step}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit_checkpoint(self, tmp: Path, step: int, keep: int) -> Path:
        """Rename a complete temporary checkpoint into place and prune old ones."""
        final = self.checkpoints / f"step-{step}"
        if final.exists():  # same step written again (e.g. final save after a periodic one)
            shutil.rmtree(final)
        os.replace(tmp, final)
        ckpts = sorted(
            (int(m.group(1)), c) for c in self.checkpoints.iterdir() if (m := _STEP_DIR.match(c.name))
        )
        for _, old in ckpts[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def write_dir_atomic(self, name: str, write: Callable[[Path], None]) -> Path:
        """Write a whole folder (e.g. the final ``model/``) aside, then rename it into place."""
        final = self.path / name
        tmp = self.path / f".tmp-{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write(tmp)
        if final.exists():
            old = self.path / f".old-{name}-{int(time.time())}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        return final


def weights_checkpoint(hf_config):
    """(save, load) of the training loop's checkpoints: the whole state dict in ``weights.pt``, and
    the model's config, which marks the folder as a checkpoint."""
    import torch

    def save(m, folder: Path):
        hf_config.to_json_file(str(folder / "config.json"))
        torch.save(m.state_dict(), folder / "weights.pt")

    def load(m, folder: Path):
        m.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu", weights_only=True))

    return save, load


def run_info(cfg, status: str, **extra) -> dict:
    """What ``run.json`` records: version, status, seed, command, software and host."""
    import platform
    import sys

    import torch
    import transformers

    import lmvalue

    return {
        "lmvalue_version": lmvalue.__version__,
        "status": status,
        "seed": cfg.train.seed,
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "host": platform.node(),
        **extra,
    }


def mark_failed(run: RunDir, err: BaseException) -> None:
    """Record in ``run.json`` that the run stopped on ``err`` (interrupted by the user, or failed)."""
    path = run.path / "run.json"
    if not path.is_file():
        return  # it failed before it started: nothing to mark
    try:
        info = read_json(path)
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        info.update(
            status=status,
            error=f"{type(err).__name__}: {err}"[:2000],
            stopped=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        write_json_atomic(path, info)
    except (OSError, ValueError, LmvalueError):
        pass  # the disk that failed the run may not take this either; the original error is what matters


def finish_run(run: RunDir, metrics: dict, model_dirs=()) -> None:
    """Write ``metrics.json``, mark ``run.json`` finished, and copy both into every model folder
    (as ``lmvalue_metrics.json`` / ``lmvalue_run.json``) so a model folder describes itself."""
    write_json_atomic(run.path / "metrics.json", metrics)
    info = read_json(run.path / "run.json")
    info.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json_atomic(run.path / "run.json", info)
    for folder in model_dirs:
        for name in ("metrics.json", "run.json"):
            (Path(folder) / f"lmvalue_{name}").write_text(
                (run.path / name).read_text(encoding="utf-8"), encoding="utf-8"
            )
