"""The one place that reads model weights from a folder a user gave.

Every model lmvalue loads from disk comes through :func:`from_pretrained` (transformers
checkpoints) or :func:`load_safetensors` (lmvalue's own weight files). Both check the files first:

* only safetensors are read, never pickles (``pytorch_model.bin`` can run code when unpickled);
* a missing, truncated or foreign ``*.safetensors`` file is one clear :class:`CheckpointError`
  (what, where, how to fix), not a traceback from deep inside a loader.

Hub names (``bert-base-chinese``) are passed to transformers as they are, with
``use_safetensors=True``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from lmvalue.errors import CheckpointError, setting
from lmvalue.files import PACKAGE_PREFIX, package_model_folder

__all__ = [
    "package_model_folder",
    "resolve_checkpoint",
    "check_safetensors",
    "check_weights_folder",
    "from_pretrained",
    "load_config",
    "load_safetensors",
]

_INDEX = "model.safetensors.index.json"
_HINT = "re-create the folder (rerun the command that wrote it), or point to another model folder"


def check_safetensors(path: str | Path) -> None:
    """Raise CheckpointError unless ``path`` is a complete safetensors file (header and every tensor)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the model folder is incomplete; {_HINT}")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20:
                raise ValueError("the header length is implausible")
            if n > size - 8:
                raise CheckpointError(
                    f"{path} is truncated: its header alone needs {n + 8:,} bytes but the file has {size:,} "
                    f"(an interrupted copy or download?); {_HINT}"
                )
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, stop = info["data_offsets"]
            if not (0 <= begin <= stop):
                raise ValueError(f"bad offsets for tensor {name}")
            end = max(end, stop)
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e}); {_HINT}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path} is truncated: its header describes {8 + n + end:,} bytes but the file has {size:,} "
            f"(an interrupted copy or download?); {_HINT}"
        )


def check_weights_folder(folder: str | Path) -> None:
    """Check the safetensors weights of a local Hugging Face model folder, refusing pickled weights."""
    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        check_safetensors(folder / "model.safetensors")
        return
    if (folder / _INDEX).is_file():
        try:
            shards = sorted(
                set(json.loads((folder / _INDEX).read_text(encoding="utf-8"))["weight_map"].values())
            )
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(f"{folder / _INDEX} is not a valid weight index ({e}); {_HINT}") from None
        for shard in shards:
            check_safetensors(folder / shard)
        return
    pickles = [n for n in ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index") if (folder / n).exists()]
    if pickles:
        raise CheckpointError(
            f"{folder} holds its weights as {pickles[0]}, not safetensors: lmvalue never loads pickled weights "
            "(they can run code). Convert it once where you trust the file, e.g. "
            "`AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`"
        )
    raise CheckpointError(
        f"{folder} has no model weights (no model.safetensors): the model folder is incomplete; {_HINT}"
    )


def _is_local(ref: str | Path) -> bool:
    text = str(ref)
    return isinstance(ref, Path) or os.path.exists(text) or text.startswith((".", "/", "~"))


def from_pretrained(auto_cls: Any, ref: str | Path, **kwargs) -> Any:
    """``auto_cls.from_pretrained(ref, use_safetensors=True, **kwargs)`` with the folder checked first
    and a loading failure turned into a CheckpointError."""
    if str(ref).startswith(PACKAGE_PREFIX):
        ref = package_model_folder(str(ref))
    if _is_local(ref):
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"model folder {folder} does not exist: check the path")
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"{folder} is not a model folder (no config.json); give a folder written by lmvalue or "
                "save_pretrained, or a hub name"
            )
        check_weights_folder(folder)
        ref = str(folder)
    try:
        return auto_cls.from_pretrained(str(ref), use_safetensors=True, **kwargs)
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"cannot load the model {str(ref)!r}: {e}") from None
    except Exception as e:  # safetensors' own error type, and loaders' errors on foreign folders
        if type(e).__name__ == "SafetensorError":
            raise CheckpointError(f"cannot read the weights of {str(ref)!r} ({e}); {_HINT}") from None
        raise


def load_config(ref: str | Path) -> Any:
    """``AutoConfig.from_pretrained(ref)``, a failure (no such hub name offline, a foreign folder) as a
    CheckpointError."""
    from transformers import AutoConfig

    if str(ref).startswith(PACKAGE_PREFIX):
        ref = package_model_folder(str(ref))
    try:
        return AutoConfig.from_pretrained(str(ref))
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot load a model config from {str(ref)!r}: {e}") from None


def load_safetensors(path: str | Path) -> dict:
    """``safetensors.torch.load_file`` of a checked file."""
    from safetensors.torch import load_file

    check_safetensors(path)
    return load_file(str(path))


def resolve_checkpoint(ref: str) -> str:
    """A pretraining run folder means its ``model/``; other local folders must hold ``config.json``.

    Raises:
        CheckpointError: a local folder that is not a checkpoint (with what it is instead).
    """
    if ref.startswith(PACKAGE_PREFIX):
        return package_model_folder(ref)
    path = Path(ref).expanduser()
    if not path.exists():
        if ref.startswith((".", "/", "~")) or os.sep + os.sep in ref:
            raise CheckpointError(
                f"checkpoint folder {ref} does not exist: check the path ({setting('model.init_from')})"
            )
        return ref  # a hub name
    if (path / "config.json").is_file():
        return str(path)
    if (path / "model" / "config.json").is_file():
        return str(path / "model")  # an lmvalue run folder
    if (path / "base").is_dir() or (path / "model" / "base").is_dir():
        raise CheckpointError(
            f"{ref} is a parameter-efficient fine-tuned model (adapter + base/): start from its merged/ "
            "folder (written with --merge) or from its base/"
        )
    raise CheckpointError(
        f"{ref} is not a checkpoint folder (no config.json, and no model/config.json of an lmvalue run); "
        f"give a model folder, a run folder or a hub name ({setting('model.init_from')})"
    )
