"""Dataclass configs: the single source of truth for every command.

Each command has one top-level config made of sections (``model``, ``data``, ``train``, ...).
The CLI is generated from these dataclasses (``--train.lr 1e-3`` or ``train.lr=1e-3``), YAML
files use the same nesting, and the resolved config is saved next to every run. Field help
text lives in ``field(metadata={"help": ...})`` so that it shows up in ``--help``.

Validation collects every problem and raises one :class:`ConfigError` listing them all.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmvalue.errors import ConfigError


def _f(default, help: str, **kw):
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


MODEL_PRESETS: dict[str, dict[str, int]] = {
    # layers / hidden / heads / feed-forward
    "tiny": dict(num_layers=2, hidden=128, heads=2, ffn=512),
    "mini": dict(num_layers=4, hidden=256, heads=4, ffn=1024),
    "small": dict(num_layers=4, hidden=512, heads=8, ffn=2048),
    "medium": dict(num_layers=8, hidden=512, heads=8, ffn=2048),
    "base": dict(num_layers=12, hidden=768, heads=12, ffn=3072),
}
ARCHS = ("bert", "gpt2", "llama")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TOKENIZER_KINDS = ("wordpiece", "bpe", "unigram")


@dataclass
class ModelConfig:
    preset: str = _f("tiny", f"architecture size: one of {', '.join(MODEL_PRESETS)}")
    arch: str = _f("bert", "bert (encoder, masked LM) | gpt2 | llama (decoders, causal LM)")
    init_from: str | None = _f(
        None, "start from this Hugging Face checkpoint folder or hub name (weights only; not --resume)"
    )
    tokenizer: str | None = _f(None, "existing tokenizer folder or hub name; default: train one on the data")
    dropout: float = _f(0.1, "dropout on hidden states and attention")
    max_position_embeddings: int = _f(512, "longest sequence the model accepts")
    num_layers: int | None = _f(None, "override the preset's number of layers")
    hidden: int | None = _f(None, "override the preset's hidden size")
    heads: int | None = _f(None, "override the preset's attention heads")
    ffn: int | None = _f(None, "override the preset's feed-forward size")

    def problems(self) -> list[str]:
        out = []
        if self.init_from is None and self.preset not in MODEL_PRESETS:
            out.append(f"model.preset={self.preset!r} is unknown; choose one of {', '.join(MODEL_PRESETS)}")
        if self.arch not in ARCHS:
            out.append(f"model.arch={self.arch!r} is unknown; choose one of {', '.join(ARCHS)}")
        if not 0 <= self.dropout < 1:
            out.append(f"model.dropout={self.dropout} must be in [0, 1)")
        dims = self.dims() if self.preset in MODEL_PRESETS else None
        if dims and dims["hidden"] % dims["heads"]:
            out.append(f"model.hidden={dims['hidden']} is not divisible by model.heads={dims['heads']}")
        return out

    def dims(self) -> dict[str, int]:
        """The preset's sizes with any explicit overrides applied."""
        dims = dict(MODEL_PRESETS[self.preset])
        for key in dims:
            if getattr(self, key) is not None:
                dims[key] = getattr(self, key)
        return dims


@dataclass
class TokenizerConfig:
    kind: str = _f("wordpiece", "wordpiece (BERT, CJK split per character) | bpe (byte-level, GPT) | unigram")
    vocab_size: int = _f(8000, "vocabulary size to train")
    lowercase: bool = _f(True, "lower-case text before tokenizing (wordpiece, unigram)")
    max_docs: int | None = _f(None, "train the tokenizer on at most this many documents")
    min_frequency: int = _f(2, "drop merges/pieces seen fewer times than this")

    def problems(self) -> list[str]:
        out = []
        if self.kind not in TOKENIZER_KINDS:
            out.append(f"tokenizer.kind={self.kind!r} is unknown; choose one of {', '.join(TOKENIZER_KINDS)}")
        if self.vocab_size < 100:
            out.append(f"tokenizer.vocab_size={self.vocab_size} is too small (at least 100)")
        return out


@dataclass
class DataConfig:
    source: str = _f(
        "demo:zh-reviews", "unlabeled text: file, glob, folder, hf:NAME[:CONFIG][:SPLIT] or demo:NAME"
    )
    text_column: str = _f("text", "column holding the text in csv/tsv/jsonl/parquet/hf sources")
    encoding: str = _f("utf-8", "text encoding of local files")
    errors: str = _f("strict", "what to do with undecodable bytes: strict | replace | ignore")
    paragraphs: bool = _f(False, ".txt files: documents are separated by blank lines instead of one per line")
    max_docs: int | None = _f(None, "read at most this many documents")
    block_size: int = _f(128, "tokens per packed training block")
    eval_fraction: float = _f(0.02, "share of documents held out for evaluation")
    eval_max_blocks: int = _f(256, "evaluate on at most this many held-out blocks")
    num_workers: int = _f(0, "data loader worker processes (masking runs in them)")

    def problems(self) -> list[str]:
        out = []
        if self.errors not in ("strict", "replace", "ignore"):
            out.append(f"data.errors={self.errors!r} must be strict, replace or ignore")
        if self.block_size < 8:
            out.append(f"data.block_size={self.block_size} is too small (at least 8)")
        if not 0 < self.eval_fraction < 0.5:
            out.append(f"data.eval_fraction={self.eval_fraction} must be in (0, 0.5)")
        if self.num_workers < 0:
            out.append("data.num_workers must be >= 0")
        return out


@dataclass
class ObjectiveConfig:
    names: list[str] = _f(["mlm"], "self-supervised objectives by name, e.g. [mlm] or [mlm, sop]")
    weights: list[float] | None = _f(None, "one loss weight per objective (default 1.0 each)")
    mask_rate: float = _f(0.15, "share of tokens to predict in masked-LM objectives")
    mask_token_share: float = _f(0.8, "of the predicted tokens: share replaced by [MASK]")
    random_token_share: float = _f(0.1, "of the predicted tokens: share replaced by a random token")
    sparse_head: bool = _f(True, "compute the output projection only at masked positions (same loss, faster)")

    def problems(self) -> list[str]:
        out = []
        if not self.names:
            out.append("objective.names is empty; pick at least one objective, e.g. [mlm]")
        if self.weights is not None and len(self.weights) != len(self.names):
            out.append(f"objective.weights has {len(self.weights)} values for {len(self.names)} objectives")
        if not 0 < self.mask_rate < 1:
            out.append(f"objective.mask_rate={self.mask_rate} must be in (0, 1)")
        if self.mask_token_share + self.random_token_share > 1:
            out.append("objective.mask_token_share + objective.random_token_share must be <= 1")
        return out


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/pretrain", "folder for checkpoints, logs, config and metrics")
    seed: int = _f(0, "random seed (data order, masking, initialization, dropout)")
    batch_size: int = _f(32, "sequences per micro-batch per process")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    optimizer: str = _f("adamw", "adamw | sgd")
    lr: float = _f(5e-4, "peak learning rate")
    weight_decay: float = _f(0.01, "decoupled weight decay (not applied to biases and norms)")
    momentum: float = _f(0.9, "SGD momentum")
    scheduler: str = _f("linear", "learning-rate decay after warm-up: linear | cosine | constant")
    warmup: float = _f(0.06, "warm-up length: a fraction of the run (< 1) or a number of steps (>= 1)")
    max_steps: int = _f(1000, "optimizer steps to run (the schedule spans these)")
    max_minutes: float | None = _f(
        None, "stop after this many minutes of training; the schedule then follows elapsed time"
    )
    grad_clip: float | None = _f(1.0, "clip the gradient norm to this value (none: no clipping)")
    eval_every: int = _f(200, "evaluate on held-out data every N steps")
    save_every: int = _f(200, "write a resumable checkpoint every N steps")
    keep_checkpoints: int = _f(2, "how many resumable checkpoints to keep")
    checkpoints: bool = _f(True, "write resumable checkpoints (off for short throw-away runs)")
    patience: int | None = _f(None, "early stopping: stop after N evaluations without improvement")
    select_best: bool = _f(False, "save the weights of the best evaluation instead of the last")
    log_every: int = _f(10, "log training loss every N steps")
    precision: str = _f("auto", "auto (bf16 on capable GPUs, else fp32) | fp32 | bf16 | fp16")
    threads: int | None = _f(None, "CPU threads for torch (default: all cores of this process)")
    progress: bool = _f(True, "show a progress bar")
    resume: bool = _f(False, "continue the run in output_dir from its last checkpoint")
    overwrite: bool = _f(False, "replace a finished or unfinished run in output_dir")

    def problems(self) -> list[str]:
        out = []
        if self.optimizer not in OPTIMIZERS:
            out.append(f"train.optimizer={self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            out.append(f"train.scheduler={self.scheduler!r} must be one of {', '.join(SCHEDULERS)}")
        if self.precision not in PRECISIONS:
            out.append(f"train.precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                out.append(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.lr <= 0:
            out.append(f"train.lr={self.lr} must be > 0")
        if self.warmup < 0:
            out.append(f"train.warmup={self.warmup} must be >= 0")
        if self.max_minutes is not None and self.max_minutes <= 0:
            out.append(f"train.max_minutes={self.max_minutes} must be > 0")
        if self.resume and self.overwrite:
            out.append("train.resume and train.overwrite exclude each other")
        return out


@dataclass
class PretrainConfig:
    """`lmvalue pretrain`: self-supervised pretraining on unlabeled text."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def problems(self) -> list[str]:
        out = []
        if self.data.block_size > self.model.max_position_embeddings:
            out.append(
                f"data.block_size={self.data.block_size} exceeds "
                f"model.max_position_embeddings={self.model.max_position_embeddings}"
            )
        return out


# ---------------------------------------------------------------------------------------------
# Generic machinery: to/from dicts, dotted overrides, YAML, validation.


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        (item,) = args
        if isinstance(value, str):
            text = value.strip()
            parsed = (
                yaml.safe_load(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
            )
            value = parsed
        if not isinstance(value, list | tuple):
            value = [value]
        return [_coerce(v, item, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            if tp is int and isinstance(value, str):
                number = float(value)
                if not number.is_integer():
                    raise ValueError
                return int(number)
            if tp is int and isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        return str(value)
    return value


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from a nested dict; unknown keys are errors (typos must not pass)."""
    data = dict(data or {})
    hints = _hints(cls)
    kwargs = {}
    problems = []
    for key, value in data.items():
        name = key.replace("-", "_")
        path = f"{where}{name}"
        if name not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            problems.append(f"unknown option {path!r} (known in this section: {known})")
            continue
        tp = hints[name]
        try:
            if _is_section(tp):
                if value is not None and not isinstance(value, dict):
                    raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
                kwargs[name] = from_dict(tp, value, where=f"{path}.")
            else:
                kwargs[name] = _coerce(value, tp, path)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.replace("-", "_").split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def build_config(cls, *, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """Defaults, then the YAML file, then dotted overrides; validated; every problem reported at once."""
    data: dict = load_yaml(yaml_path) if yaml_path else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    cfg = from_dict(cls, data)
    validate(cfg)
    return cfg


def validate(cfg) -> None:
    problems: list[str] = []
    if hasattr(cfg, "problems"):
        problems += cfg.problems()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and hasattr(value, "problems"):
            problems += value.problems()
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def save_yaml(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")
