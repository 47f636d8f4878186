"""Running a study's cells side by side: worker processes on this machine, or Ray core tasks.

The study (:func:`lmvalue.value.study.run_study`) hands this module its cells, how to prepare an arm and
how to run a cell; what comes back is recorded by the study's driver process alone, as it arrives, in
whatever order (workers and tasks never open ``results.sqlite``). See docs/scaling.md.

* ``local`` with ``workers > 1`` (:func:`run_local_pool`): one single-process
  :class:`~concurrent.futures.ProcessPoolExecutor` per worker slot (``spawn``), each with its share of the
  CPU threads or one GPU. Arms are prepared (pretrained) one after another in a thread of the driver while
  the slots run the cells of the arms already prepared. A slot whose process dies (SIGKILL, out of memory)
  breaks only its own pool, so the cell it ran is known exactly: it is retried in a fresh process at most
  ``retries`` times, then recorded as failed with the reason; the other slots go on.
* ``ray`` (:func:`run_ray`): each preparation (the study tokenizer, each pretraining run, each arm) is a
  Ray task and each cell a task that depends on its arm's; Ray schedules them by their ``num_cpus`` /
  ``num_gpus`` and retries a task whose worker died (``max_retries``).

Nothing here imports the study: it passes its functions in (module-level ones, so they pickle by name).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmvalue.errors import ConfigError

log = logging.getLogger("lmvalue")

RAY_INSTALL = (
    "--executor ray needs Ray, which is an optional extra: pip install 'lmvalue[ray]' "
    "(from a source checkout: pip install -e '.[ray]'), or pip install 'ray>=2.9'"
)


def check_ray() -> None:
    """Raise a :class:`ConfigError` saying how to install Ray when it cannot be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(RAY_INSTALL) from None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Cell:
    arm: Any  # the study's Arm
    budget: int
    seed: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.arm.name, self.budget, self.seed)


def failed(error: str, **extra) -> dict:
    return {"status": "failed", "error": error, "wall_s": 0.0, "cpu_s": 0.0, **extra}


def run_cell_job(runner: Callable, arm, state: dict, train, test, budget: int, seed: int, cfg) -> dict:
    """One cell where it runs (this process, a worker, a Ray task): the runner's result with ``status``,
    ``wall_s`` and ``cpu_s`` (this process's CPU time); an exception becomes a failed result."""
    t0, c0 = time.perf_counter(), time.process_time()
    if state["status"] != "done":
        result = {"status": "failed", "error": f"arm preparation failed: {state['error']}"}
    else:
        try:
            result = runner(arm, state, train, test, budget, seed, cfg)
            result["status"] = "done"
        except Exception as e:  # one failing arm must not stop the study
            result = {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=5),
            }
    result["wall_s"], result["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    return result


def set_threads(threads: int | None) -> None:
    """This process's CPU threads: torch's intra-op pool, the BLAS/OpenMP pools of numpy and
    scikit-learn, and the environment of anything it starts."""
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # scikit-learn brings it; without it the environment variables still apply
        pass


# --- local worker processes ---------------------------------------------------------------------

_WORKER: dict = {}


def _worker_init(threads: int, device: int | None, train, test, parent: int) -> None:
    if device is not None:  # before CUDA starts in this process: it sees one GPU, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    set_threads(threads)
    _WORKER.update(train=train, test=test)

    def orphaned() -> None:  # the driver was killed: stop, rather than run a cell nobody records
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()


def _worker_cell(runner: Callable, arm, state: dict, budget: int, seed: int, cfg) -> dict:
    result = run_cell_job(runner, arm, state, _WORKER["train"], _WORKER["test"], budget, seed, cfg)
    result["worker"] = os.getpid()
    return result


class _Slot:
    """One worker process (a one-process pool): a crash breaks this pool only, and names its cell."""

    def __init__(self, index: int, threads: int, device: int | None, train, test):
        self.index, self.threads, self.device = index, threads, device
        self.train, self.test = train, test
        self.pool = None
        self.cell: Cell | None = None
        self.future = None

    def start(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(self.threads, self.device, self.train, self.test, os.getpid()),
        )

    def submit(self, runner: Callable, cell: Cell, state: dict, cfg):
        if self.pool is None:
            self.start()
        self.cell = cell
        self.future = self.pool.submit(_worker_cell, runner, cell.arm, state, cell.budget, cell.seed, cfg)
        return self.future

    def release(self) -> None:
        self.cell, self.future = None, None

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self, *, wait: bool = False) -> None:
        """``wait``: the pool is idle, let its process exit; otherwise kill a cell still running."""
        if self.pool is None:
            return
        if wait:
            self.pool.shutdown(wait=True)
            self.pool = None
            return
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:  # a cell still running (Ctrl-C, an error of the driver) is not waited for
            if p.is_alive():
                p.kill()
        self.pool = None


def local_devices() -> list[int]:
    """The CUDA devices of this machine (empty without CUDA): local workers take one each."""
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:
        return []


def run_local_pool(
    cells: list[Cell],
    *,
    workers: int,
    threads: int,
    prepare: Callable[[Any], dict],
    on_prepared: Callable[[Any, dict], dict],
    runner: Callable,
    cfg,
    train,
    test,
    on_cell: Callable[[Cell, dict], None],
    retries: int,
) -> None:
    """Run ``cells`` in ``workers`` worker processes.

    ``prepare(arm)`` runs in a thread of this process, one arm after another in the cells' order, and
    returns what the study's ``on_prepared(arm, outcome)`` (called here, in the driver's thread) turns
    into the arm's state; ``on_cell(cell, result)`` records each cell as it finishes.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    devices = local_devices()
    if devices and workers > len(devices):
        log.warning("%d workers share %d GPUs: some GPUs run two workers' cells", workers, len(devices))
    slots = [
        _Slot(k, threads, devices[k % len(devices)] if devices else None, train, test) for k in range(workers)
    ]
    where = f"GPU {', '.join(str(s.device) for s in slots)}" if devices else f"{threads} threads each"
    log.info("running cells in %d worker processes (%s)", workers, where)
    arms = list(dict.fromkeys(c.arm.name for c in cells))
    by_arm: dict[str, list[Cell]] = {}
    arm_of = {}
    for c in cells:
        by_arm.setdefault(c.arm.name, []).append(c)
        arm_of[c.arm.name] = c.arm
    states: dict[str, dict] = {}
    ready: deque[Cell] = deque()
    attempts: dict[tuple, int] = {}
    preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmvalue-prepare")
    # one arm after another: an arm's pretraining is started once the previous one is recorded
    queue = deque(arms)
    prep_future = None
    prep_arm = None
    completed = False
    try:
        while queue or prep_future is not None or ready or any(s.future for s in slots):
            if prep_future is None and queue:
                prep_arm = arm_of[queue.popleft()]
                prep_future = preparer.submit(prepare, prep_arm)
            for slot in slots:
                if slot.future is None and ready:
                    cell = ready.popleft()
                    slot.submit(runner, cell, states[cell.arm.name], cfg)
            pending = [s.future for s in slots if s.future] + ([prep_future] if prep_future else [])
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            if prep_future is not None and prep_future in done:
                try:
                    outcome = prep_future.result()
                except Exception as e:  # prepare records its own failures; this is a bug's last resort
                    outcome = {"state": {"status": "failed", "error": f"{type(e).__name__}: {e}"}}
                prep_future = None
                state = on_prepared(prep_arm, outcome)
                states[prep_arm.name] = state
                if state["status"] == "done":
                    ready.extend(by_arm[prep_arm.name])
                else:  # its cells fail at once, with the reason; no worker needed
                    for cell in by_arm[prep_arm.name]:
                        on_cell(cell, failed(f"arm preparation failed: {state['error']}"))
            for slot in slots:
                if slot.future is None or slot.future not in done:
                    continue
                cell, future = slot.cell, slot.future
                slot.release()
                try:
                    result = future.result()
                except BrokenProcessPool:
                    n = attempts[cell.key] = attempts.get(cell.key, 0) + 1
                    slot.restart()
                    if n <= retries:
                        log.warning(
                            "  the worker running %s @ %d labels, seed %d died; running it again (attempt %d of %d)",
                            *cell.key,
                            n + 1,
                            retries + 1,
                        )
                        ready.appendleft(cell)
                        continue
                    result = failed(
                        f"its worker process died (killed by a signal or out of memory) in each of {n} "
                        f"attempt{'s' if n > 1 else ''}"
                    )
                except Exception as e:  # the cell's arguments or result did not pickle, ...
                    result = failed(f"{type(e).__name__}: {e}")
                result["attempts"] = attempts.get(cell.key, 0) + 1
                on_cell(cell, result)
        completed = True
    finally:
        preparer.shutdown(wait=False, cancel_futures=True)
        for slot in slots:
            slot.stop(wait=completed)


# --- Ray ----------------------------------------------------------------------------------------


@dataclass
class Node:
    """One preparation task: ``arm`` prepared after the nodes ``after`` (their records seed its own)."""

    key: str
    arm: Any
    after: list[str]
    network: bool  # pretrains a network: takes the GPUs of a network cell


def _ray_prepare(prepare: Callable, arm, data, known: dict, threads: int | None, *deps: dict) -> dict:
    for dep in deps:
        if dep["state"]["status"] != "done":
            return {"state": dict(dep["state"]), "records": {}}
    merged = dict(known)
    for dep in deps:
        merged.update(dep.get("records", {}))
    set_threads(threads)
    return prepare(arm, data, merged)


def _ray_cell(
    runner: Callable, arm, prepared: dict, train, test, budget: int, seed: int, cfg, threads
) -> dict:
    set_threads(threads)
    result = run_cell_job(runner, arm, prepared["state"], train, test, budget, seed, cfg)
    result["worker"] = f"{os.uname().nodename}:{os.getpid()}"
    return result


def _ray_reason(e: BaseException) -> str:
    """A task's failure in one line: the exception, not Ray's whole report."""
    cause = getattr(e, "cause", None)
    if cause is not None and not isinstance(cause, type(e)):
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def run_ray(
    cells: list[Cell],
    *,
    address: str | None,
    nodes: list[Node],
    arm_nodes: dict[str, str],
    prepare: Callable,
    data: dict,
    known: dict,
    on_prepared: Callable[[Node, dict], dict],
    runner: Callable,
    cfg,
    on_cell: Callable[[Cell, dict], None],
    retries: int,
    cpus: int,
    gpus: float | None,
    network: Callable[[Any], bool],
) -> None:
    """Run the preparation ``nodes`` and the ``cells`` as Ray tasks (cell -> its arm's node via
    ``arm_nodes``); record each node's outcome with ``on_prepared`` and each cell with ``on_cell``, in
    the order they finish. A Ray runtime already started in this process is used as it is; otherwise one
    is started (``address``: an existing cluster) and stopped at the end."""
    import ray

    started = not ray.is_initialized()
    if started:
        log.info("starting Ray%s ...", f" (cluster at {address})" if address else " on this machine")
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        resources = ray.cluster_resources()
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        log.info(
            "Ray: %g CPUs, %g GPUs; a cell takes %d CPU%s%s",
            resources.get("CPU", 0),
            resources.get("GPU", 0),
            cpus,
            "s" if cpus > 1 else "",
            f" and {gpus:g} GPU (network arms)" if gpus else "",
        )
        prep_task = ray.remote(_ray_prepare)
        cell_task = ray.remote(_ray_cell)
        data_ref, known_ref = ray.put(data), ray.put(known)
        train_ref, test_ref = ray.put(data["train"]), ray.put(data["test"])
        refs: dict[str, Any] = {}
        pending: dict[Any, tuple[str, Any]] = {}
        for node in nodes:  # in an order where a node comes after those it waits for
            ref = prep_task.options(
                num_cpus=cpus, num_gpus=gpus if node.network else 0, max_retries=retries
            ).remote(prepare, node.arm, data_ref, known_ref, cpus, *[refs[k] for k in node.after])
            refs[node.key] = ref
            pending[ref] = ("node", node)
        for cell in cells:
            ref = cell_task.options(
                num_cpus=cpus, num_gpus=gpus if network(cell.arm) else 0, max_retries=retries
            ).remote(
                runner,
                cell.arm,
                refs[arm_nodes[cell.arm.name]],
                train_ref,
                test_ref,
                cell.budget,
                cell.seed,
                cfg,
                cpus,
            )
            pending[ref] = ("cell", cell)
        node_done: set[str] = set()

        def finish_node(ref, node: Node) -> None:
            try:
                outcome = ray.get(ref)
            except Exception as e:  # its worker died every time, or a dependency failed
                outcome = {"state": {"status": "failed", "error": _ray_reason(e)}, "records": {}}
            on_prepared(node, outcome)
            node_done.add(node.key)

        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            kind, item = pending.pop(ref)
            if kind == "node":
                if item.key not in node_done:
                    finish_node(ref, item)
                continue
            node_ref = refs[arm_nodes[item.arm.name]]
            if node_ref in pending:  # record the arm before its first cell
                finish_node(node_ref, pending.pop(node_ref)[1])
            try:
                result = ray.get(ref)
            except Exception as e:
                try:
                    state = ray.get(node_ref)["state"]
                except Exception as prep_error:
                    state = {"status": "failed", "error": _ray_reason(prep_error)}
                if state["status"] != "done":
                    result = failed(f"arm preparation failed: {state['error']}")
                else:
                    result = failed(
                        f"its Ray task failed after {retries + 1} attempt{'s' if retries else ''}: {_ray_reason(e)}"
                    )
            on_cell(item, result)
    finally:
        if started:
            ray.shutdown()
