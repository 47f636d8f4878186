"""THE training loop: pretraining, fine-tuning, prompting and continual runs all go through it.

The loop knows nothing about objectives or tasks. It is given

* ``loss_fn(model, batch) -> dict`` with a scalar ``loss`` (and named parts to log),
* ``epoch_batches(epoch) -> Dataset`` whose item ``i`` is the complete batch ``i`` of that epoch
  for this process (see :class:`lmvalue.data.packing.BlockBatches`),
* ``evaluate(model) -> dict`` of held-out metrics, one of which is monitored,
* ``save_model(model, folder)`` / ``load_model(model, folder)`` for checkpoint weights,

and it owns the optimizer, the learning-rate schedule, gradient accumulation and clipping,
time/step budgets, evaluation and early stopping, NaN detection, progress, TensorBoard, and
atomic checkpoints with exact resume (optimizer, RNG and data position). It runs on
``accelerate``, so the same code runs on one CPU and under ``accelerate launch`` / ``torchrun``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmvalue.attention import use_cpu_attention
from lmvalue.checkpoint import STATE_FILE, RunDir, write_json_atomic
from lmvalue.config import TrainConfig
from lmvalue.dropout import use_fast_dropout
from lmvalue.errors import TrainingError

log = logging.getLogger("lmvalue")


@dataclass
class LoopState:
    """Everything besides weights and optimizer needed to continue a run exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    tokens: int = 0  # real (non-padding) tokens trained on, all processes
    elapsed: float = 0.0  # seconds of training so far, across resumes
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    evals: list = field(default_factory=list)
    stop_reason: str = ""


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str) -> str:
    """``auto``: bf16 autocast on GPUs that support it and on CPUs with native bf16 (fp32 master
    weights and optimizer either way), else fp32; other values are kept."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def make_accelerator(cfg: TrainConfig):
    """An ``accelerate.Accelerator`` with the precision chosen for this hardware."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = resolve_precision(cfg.precision)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from accelerate.state import AcceleratorState

    # accelerate keeps one process-wide state and refuses another precision later in the same
    # process (a study pretraining in bf16 then fine-tuning in fp32): start that state afresh. The
    # distributed part (PartialState) is kept.
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed:
        AcceleratorState._reset_state()
    return Accelerator(
        # Without a GPU, accelerate only sets up multi-process (gloo) runs when told cpu=True.
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )


def seed_everything(seed: int, rank: int = 0) -> None:
    # Different dropout noise per process; data order and masks are seeded separately.
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, param_groups: list[dict] | None = None):
    """AdamW (fused/foreach where available) or SGD; no weight decay on biases and norms."""
    if param_groups is None:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        param_groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    param_groups = [g for g in param_groups if g["params"]]
    for g in param_groups:
        g.setdefault("lr_scale", 1.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(
        param_groups,
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        fused=fused or None,
        foreach=None if fused else True,
    )


def lr_factor(progress: float, warmup: float, kind: str) -> float:
    """Warm-up then decay, as a function of run progress in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if kind == "constant":
        return 1.0
    p = (progress - warmup) / max(1e-12, 1.0 - warmup)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    return max(0.0, 1.0 - p)


def _progress(state: LoopState, cfg: TrainConfig) -> float:
    progress = state.step / cfg.max_steps
    if cfg.max_minutes:
        progress = max(progress, state.elapsed / (cfg.max_minutes * 60))
    return progress


def _rng_state() -> dict:
    """Every generator's state as tensors and plain numbers, so that it loads with
    ``torch.load(..., weights_only=True)`` (no pickled objects in a checkpoint)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def _count_tokens(batch: dict) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def train_loop(
    *,
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, dict], dict],
    epoch_batches: Callable[[int], torch.utils.data.Dataset],
    evaluate: Callable[[torch.nn.Module], dict],
    cfg: TrainConfig,
    run: RunDir,
    accelerator,
    save_model: Callable[[torch.nn.Module, Path], None],
    load_model: Callable[[torch.nn.Module, Path], None],
    resume_from: Path | None = None,
    monitor: str = "eval_loss",
    mode: str = "min",
    num_workers: int = 0,
    param_groups: list[dict] | None = None,
    on_step: Callable[[torch.nn.Module, LoopState], None] | None = None,
) -> LoopState:
    """Train until ``max_steps``, ``max_minutes`` or early stopping; return the final state.

    On return ``model`` holds the final weights (the best evaluation's when ``cfg.select_best``).
    ``on_step(model, state)`` runs after each optimizer step, before the gradients are cleared
    (``state.step`` is the number of steps done before this one).

    Raises:
        TrainingError: the loss became NaN/inf; the last good checkpoint is kept.
    """
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    seed_everything(cfg.seed, rank)
    optimizer = build_optimizer(model, cfg, param_groups)
    state = LoopState()
    if resume_from is not None:
        load_model(model, resume_from)
        saved = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        state = LoopState(**saved["loop"])
        rng_file = resume_from / f"rng_rank{rank}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, weights_only=True))
        if main:
            log.info("resumed from step %d of %d (checkpoint %s)", state.step, cfg.max_steps, resume_from)
    if cfg.fast_dropout:
        use_fast_dropout(model)  # no weights change: saved checkpoints are the same
    if cfg.fast_attention:
        use_cpu_attention(model)  # CPU training only; evaluation and GPUs keep SDPA
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    # Only the training forward is compiled; evaluation, saving and unwrapping use the module itself
    # (the compiled wrapper shares its parameters).
    forward_model = torch.compile(model, dynamic=True) if cfg.compile else model
    base_lrs = [cfg.lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    warmup = cfg.warmup if cfg.warmup < 1 else cfg.warmup / cfg.max_steps

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.path / "tb"), purge_step=state.step if resume_from else None)
    bar = None
    if main and cfg.progress:
        from tqdm.auto import tqdm

        # A time budget ends the run before max_steps: no step total (and no misleading ETA) then.
        # disable=None: no bar when stderr is not a terminal (logs keep the evaluation lines).
        total = None if cfg.max_minutes else cfg.max_steps
        bar = tqdm(total=total, initial=state.step, unit="step", dynamic_ncols=True, leave=True, disable=None)
        if bar.disable:
            bar = None

    best_weights = None
    last_saved_step = state.step if resume_from else None
    start = time.perf_counter() - state.elapsed
    window_tokens, window_start = 0, time.perf_counter()
    running: dict[str, float] = {}
    micro = 0

    def unwrapped():
        return accelerator.unwrap_model(model, keep_fp32_wrapper=False)

    def save_checkpoint():
        nonlocal last_saved_step
        # Every process writes its RNG into the same temporary folder; the main one renames it.
        tmp = run.checkpoints / f".tmp-step-{state.step}"
        if main:
            tmp = run.new_checkpoint_dir(state.step)
        accelerator.wait_for_everyone()
        torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
        if main:
            save_model(unwrapped(), tmp)
            torch.save({"optimizer": optimizer.state_dict(), "loop": asdict(state)}, tmp / STATE_FILE)
        accelerator.wait_for_everyone()
        if main:
            run.commit_checkpoint(tmp, state.step, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
        last_saved_step = state.step

    def do_eval() -> bool:
        """Evaluate; return True when early stopping says stop."""
        nonlocal best_weights
        metrics = evaluate(unwrapped())
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["step"] = state.step
        metrics["tokens"] = state.tokens
        metrics["elapsed_s"] = round(state.elapsed, 2)
        state.evals.append(metrics)
        value = metrics.get(monitor)
        improved = value is not None and (
            state.best is None or (value < state.best if mode == "min" else value > state.best)
        )
        if improved:
            state.best, state.best_step, state.bad_evals = value, state.step, 0
            if cfg.select_best:
                best_weights = {k: v.detach().clone() for k, v in unwrapped().state_dict().items()}
        else:
            state.bad_evals += 1
        if writer:
            for k, v in metrics.items():
                if k.startswith("eval_"):
                    writer.add_scalar(k.replace("eval_", "eval/"), v, state.step)
        if main:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("eval_"))
            (bar.write if bar else print)(f"step {state.step}: {shown}")
        return cfg.patience is not None and state.bad_evals >= cfg.patience

    stop = state.step >= cfg.max_steps
    if state.step == 0 and not state.evals:
        do_eval()  # the starting point, so that every run shows how far it moved
    while not stop:
        batches = epoch_batches(state.epoch)
        if len(batches) == 0:
            raise TrainingError(
                "the training data does not fill a single batch "
                f"(batch size {cfg.batch_size} x {world} process(es)); add data or lower train.batch_size"
            )
        loader = torch.utils.data.DataLoader(
            batches,
            batch_size=None,
            sampler=range(state.batch_in_epoch, len(batches)),
            num_workers=num_workers,
            pin_memory=accelerator.device.type == "cuda",
            persistent_workers=False,
            # Its own generator: creating an iterator must not draw from the global RNG that
            # drives dropout, or a resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(cfg.seed + state.epoch),
        )
        for batch in loader:
            batch.pop("block_index", None)
            batch = _to_device(batch, accelerator.device)
            micro += 1
            sync = micro % cfg.grad_accum == 0
            ctx = accelerator.no_sync(model) if not sync and world > 1 else _null()
            with ctx, accelerator.autocast():
                parts = loss_fn(forward_model, batch)
                loss = parts["loss"]
                accelerator.backward(loss / cfg.grad_accum)
            state.batch_in_epoch += 1
            n_tok = _count_tokens(batch) * world
            state.tokens += n_tok
            window_tokens += n_tok
            for k, v in parts.items():
                if k.endswith("loss"):
                    running[k] = running.get(k, 0.0) + float(v.detach())
            if not sync:
                continue

            loss_value = (
                accelerator.reduce(loss.detach().float(), reduction="mean") if world > 1 else loss.detach()
            )
            if not torch.isfinite(loss_value):
                _fail(run, main, state, last_saved_step, float(loss_value))
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            factor = lr_factor(_progress(state, cfg), warmup, cfg.scheduler)
            for g, base in zip(optimizer.param_groups, base_lrs, strict=True):
                g["lr"] = base * factor
            optimizer.step()
            if on_step is not None:  # before zero_grad: AdaLoRA's rank allocation reads the gradients
                on_step(unwrapped(), state)
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.elapsed = time.perf_counter() - start

            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                n = cfg.log_every * cfg.grad_accum
                means = {k: v / n for k, v in running.items()}
                running.clear()
                if writer:
                    for k, v in means.items():
                        writer.add_scalar(f"train/{k}", v, state.step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], state.step)
                    writer.add_scalar("train/tokens_per_s", tps, state.step)
                if bar:
                    bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}", tok_s=f"{tps:,.0f}")
            if bar:
                bar.update(1)

            out_of_time = cfg.max_minutes is not None and state.elapsed >= cfg.max_minutes * 60
            done = state.step >= cfg.max_steps or out_of_time
            if state.step % cfg.eval_every == 0 or done:
                if do_eval():
                    state.stop_reason = f"early stopping: no improvement in {cfg.patience} evaluations"
                    done = True
            if done and not state.stop_reason:
                state.stop_reason = (
                    "time budget" if out_of_time and state.step < cfg.max_steps else "max_steps"
                )
            if cfg.checkpoints and (state.step % cfg.save_every == 0 or done):
                state.elapsed = time.perf_counter() - start
                save_checkpoint()
            if done:
                stop = True
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0

    if bar:
        bar.close()
    if writer:
        writer.close()
    if cfg.select_best and best_weights is not None:
        unwrapped().load_state_dict(best_weights)
    state.elapsed = time.perf_counter() - start
    return state


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fail(run: RunDir, main: bool, state: LoopState, last_saved: int | None, value: float):
    where = (
        f"the last good checkpoint (step {last_saved}) is kept in {run.checkpoints}"
        if last_saved is not None
        else "no checkpoint had been written yet"
    )
    if main and (run.path / "run.json").is_file():
        from lmvalue.checkpoint import read_json

        info = read_json(run.path / "run.json")
        info.update(status="failed", error=f"loss {value} at step {state.step + 1}")
        write_json_atomic(run.path / "run.json", info)
    raise TrainingError(
        f"the loss became {value} at step {state.step + 1}; training stopped and nothing was saved after it. "
        f"{where}. Lower train.lr, keep train.grad_clip on, or check the data; "
        "then rerun with --resume to continue from that checkpoint"
    )


def param_checksum(model: torch.nn.Module) -> float:
    """A cheap fingerprint of the weights (used to check processes agree)."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters()))
