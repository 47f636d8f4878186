"""Model versions: a registry folder of fine-tuned models, a ``current`` pointer and their lineage.

Layout::

    models/
      registry.json   marks the folder as a registry (format, created)
      v1/             one version: model/ (the task model), config.yaml, metrics.json of its run,
      v2/             and version.json (parents, data fingerprints, metrics, note, created)
      current -> v2   a symbolic link: the version that is served

Every change is atomic. A version is copied to ``.tmp-…`` and renamed into place only when complete;
``current`` is switched by renaming a new link over the old one (``os.replace``), so a process killed
at any moment leaves ``current`` pointing at a complete version: the old one or the new one, never
something in between. A half-copied version is a ``.tmp-…`` folder, removed by the next change.

``lmvalue serve --model models/`` serves ``current``; ``--model models/v1`` serves a version;
``lmvalue registry rollback models/`` points ``current`` back at its parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from lmvalue.checkpoint import read_json, write_json_atomic
from lmvalue.errors import CheckpointError, ConfigError

REGISTRY_FILE = "registry.json"
VERSION_FILE = "version.json"
CURRENT = "current"
_VERSION = re.compile(r"^v(\d+)$")
# what a version keeps of a run folder (checkpoints, logs and the like stay behind)
RUN_FILES = ("config.yaml", "metrics.json", "run.json")


def is_registry(path: str | Path) -> bool:
    return (Path(path) / REGISTRY_FILE).is_file()


def _check(reg: Path) -> None:
    if not is_registry(reg):
        raise CheckpointError(
            f"{reg} is not a model registry (no {REGISTRY_FILE}); create one with "
            f"lmvalue registry add {reg} --model RUN"
        )


def init_registry(path: str | Path) -> Path:
    """Create an empty registry folder (or return an existing one). A non-empty folder that is not a
    registry is refused: nothing in it is touched."""
    reg = Path(path)
    if is_registry(reg):
        return reg
    if reg.exists() and (not reg.is_dir() or any(reg.iterdir())):
        raise ConfigError(f"{reg} exists and is not a model registry: choose an empty or new folder")
    reg.mkdir(parents=True, exist_ok=True)
    write_json_atomic(reg / REGISTRY_FILE, {"format": "lmvalue-registry", "created": _now()})
    return reg


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def version_names(reg: str | Path) -> list[str]:
    """The complete versions, oldest first."""
    reg = Path(reg)
    found = []
    for p in reg.iterdir() if reg.is_dir() else ():
        m = _VERSION.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and (p / VERSION_FILE).is_file():
            found.append((int(m.group(1)), p.name))
    return [name for _, name in sorted(found)]


def current_version(reg: str | Path) -> str | None:
    link = Path(reg) / CURRENT
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    return target if _VERSION.match(target) and (Path(reg) / target / VERSION_FILE).is_file() else None


def version_info(reg: str | Path, name: str) -> dict:
    folder = Path(reg) / name
    if not _VERSION.match(name) or not (folder / VERSION_FILE).is_file():
        known = ", ".join(version_names(reg)) or "none"
        raise ConfigError(f"{reg} has no version {name!r} (versions: {known})")
    return read_json(folder / VERSION_FILE)


def list_versions(reg: str | Path) -> list[dict]:
    """Every version's manifest, oldest first, with ``current`` marked."""
    _check(Path(reg))
    cur = current_version(reg)
    return [{**version_info(reg, n), "current": n == cur} for n in version_names(reg)]


def resolve_model(path: str | Path) -> Path:
    """The folder to load for ``path``: a registry's current version, otherwise ``path`` itself."""
    path = Path(path)
    if not is_registry(path):
        return path
    cur = current_version(path)
    if cur is None:
        raise CheckpointError(
            f"registry {path} has no current version; set one with lmvalue registry rollback {path} --to vN"
        )
    return path / cur


def fingerprint(source: str) -> dict:
    """What a data source was, to tell later whether it changed: sha256 and size of a local file (or of
    the files of a folder), else the name only (hub or built-in data)."""
    p = Path(source)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else ([p] if p.is_file() else [])
    if not files:
        return {"source": source}
    h = hashlib.sha256()
    size = 0
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        size += f.stat().st_size
    return {"source": source, "sha256": h.hexdigest(), "bytes": size}


@contextlib.contextmanager
def _locked(reg: Path):
    """One change at a time (an advisory lock; where fcntl is missing, none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(reg / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean(reg: Path) -> None:
    """Remove what a killed change left: half-copied versions and a half-made link."""
    for p in reg.iterdir():
        if p.name.startswith(".tmp-"):
            if p.is_symlink() or p.is_file():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _point(reg: Path, name: str) -> None:
    tmp = reg / f".tmp-link-{uuid.uuid4().hex[:8]}"
    os.symlink(name, tmp)
    os.replace(tmp, reg / CURRENT)  # atomic: readers see the old link or the new one
    _fsync_dir(reg)


def add_version(
    registry: str | Path,
    model: str | Path,
    *,
    parents: list[str] | None = None,
    lineage: dict | None = None,
    metrics: dict | None = None,
    note: str = "",
    make_current: bool = True,
) -> str:
    """Copy a fine-tuned model (a run folder or a model folder) into the registry as the next version.

    Args:
        parents: versions it was derived from (default: the current version, if any).
        lineage: anything to keep with it (data fingerprints, the refresh that made it).
        metrics: its scores (default: the run's metrics.json test scores, if any).
        make_current: switch ``current`` to it.

    Returns:
        the new version's name (``v3``).
    """
    reg = init_registry(registry)
    src = Path(model)
    if not src.is_dir():
        raise CheckpointError(f"model folder {src} does not exist")
    run = src if (src / "model").is_dir() else None
    model_dir = run / "model" if run is not None else src
    with _locked(reg):
        _clean(reg)
        names = version_names(reg)
        taken = [int(_VERSION.match(p.name).group(1)) for p in reg.iterdir() if _VERSION.match(p.name)]
        name = f"v{max(taken, default=0) + 1}"
        if parents is None:
            cur = current_version(reg)
            parents = [cur] if cur else []
        for p in parents:
            if p not in names:
                raise ConfigError(f"parent version {p!r} is not in {reg}")
        if metrics is None and run is not None and (run / "metrics.json").is_file():
            m = read_json(run / "metrics.json")
            metrics = {k: m.get(k) for k in ("metric", "test_score", "dev_score") if k in m}
        tmp = reg / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(model_dir, tmp / "model", symlinks=False)
        if run is not None:
            for f in RUN_FILES:
                if (run / f).is_file():
                    shutil.copy2(run / f, tmp / f)
        write_json_atomic(
            tmp / VERSION_FILE,
            {
                "version": name,
                "created": _now(),
                "parents": parents,
                "source": str(src.resolve()),
                "metrics": metrics or {},
                "lineage": lineage or {},
                "note": note,
            },
        )
        os.rename(tmp, reg / name)  # complete, or not there at all
        _fsync_dir(reg)
        if make_current:
            _point(reg, name)
    return name


def set_current(registry: str | Path, name: str) -> None:
    reg = Path(registry)
    _check(reg)
    version_info(reg, name)  # refuses an unknown one
    with _locked(reg):
        _clean(reg)
        _point(reg, name)


def rollback(registry: str | Path, to: str | None = None) -> tuple[str | None, str]:
    """Point ``current`` at ``to`` (default: the current version's first parent, else the version
    before it). Returns (previous current, new current)."""
    reg = Path(registry)
    _check(reg)
    cur = current_version(reg)
    if to is None:
        if cur is None:
            raise ConfigError(f"{reg} has no current version to roll back from; give --to vN")
        parents = version_info(reg, cur).get("parents") or []
        names = version_names(reg)
        earlier = [n for n in names if int(n[1:]) < int(cur[1:])]
        to = parents[0] if parents else (earlier[-1] if earlier else None)
        if to is None:
            raise ConfigError(f"{cur} is the first version of {reg}: there is nothing to roll back to")
    set_current(reg, to)
    return cur, to
