"""Dataclass configs: the single source of truth for every command.

Each command has one top-level config made of sections (``model``, ``data``, ``train``, ...).
The CLI is generated from these dataclasses (``--train.lr 1e-3`` or ``train.lr=1e-3``), YAML
files use the same nesting, and the resolved config is saved next to every run. Field help
text lives in ``field(metadata={"help": ...})`` so that it shows up in ``--help``.

Validation collects every problem and raises one :class:`ConfigError` listing them all.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Sequence
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
    init_vectors: bool = _f(
        False,
        "pretraining from scratch: start the input embeddings from word2vec vectors of the tokenizer's "
        "pieces, trained on the pretraining corpus first (about a minute; docs/objectives.md)",
    )

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
    cache: bool = _f(
        True,
        "tokenize the corpus once into the token cache and memory-map it (and its packed blocks) in "
        "later runs; keyed on the tokenizer and the text, so edits are never missed. Objectives that "
        "need word or sentence annotations (wwm, span, nsp, sop, tags) cache them beside the ids",
    )
    cache_dir: str | None = _f(None, "token cache folder (default: $LMVALUE_CACHE or ~/.cache/lmvalue)")
    tokenize_workers: int = _f(
        0,
        "processes that segment (jieba) and tokenize a corpus for the annotated token cache "
        "(0: one per core, at most 8; 1: this process only); the result is the same for any number",
    )
    jieba_hmm: bool = _f(
        True, "whole words of Chinese text: let jieba's HMM find words not in its dictionary"
    )
    jieba_user_dict: str | None = _f(
        None, "whole words of Chinese text: a jieba user dictionary (one 'word [freq] [tag]' per line)"
    )

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
        if self.tokenize_workers < 0:
            out.append("data.tokenize_workers must be >= 0 (0: one per core)")
        if self.jieba_user_dict and not Path(self.jieba_user_dict).expanduser().is_file():
            out.append(
                f"data.jieba_user_dict={self.jieba_user_dict!r} is not a file; give the path of a jieba "
                "user dictionary or leave it unset"
            )
        return out


@dataclass
class ObjectiveConfig:
    names: list[str] = _f(
        ["mlm"],
        "self-supervised objectives by name: mlm | wwm | span | rtd (one masking scheme; rtd: ELECTRA), optionally with "
        "nsp | sop (sentence pairs), simcse (contrastive [CLS] sentence vectors) and/or tags (word tags of a "
        "word/TAG corpus); clm for decoders",
    )
    weights: list[float] | None = _f(None, "one loss weight per objective (default 1.0 each)")
    mask_rate: float = _f(0.15, "share of tokens to predict in masked-LM objectives (mlm, wwm, span)")
    mask_token_share: float = _f(0.8, "of the predicted tokens: share replaced by [MASK]")
    random_token_share: float = _f(0.1, "of the predicted tokens: share replaced by a random token")
    sparse_head: bool = _f(True, "compute the output projection only at masked positions (same loss, faster)")
    span_p: float = _f(0.2, "span: p of the geometric distribution of span lengths in words (SpanBERT 0.2)")
    span_max_words: int = _f(10, "span: longest span in words (SpanBERT 10)")
    simcse_temperature: float = _f(0.05, "simcse: temperature of the contrastive loss (SimCSE 0.05)")
    rtd_generator_hidden: float = _f(
        0.25, "rtd: width of the generator as a share of the model's hidden size (ELECTRA 1/4)"
    )
    rtd_weight: float = _f(50.0, "rtd: weight of the discriminator loss against the generator's (ELECTRA 50)")
    reference_mlm: bool = _f(
        True,
        "encoders: also score held-out packed blocks with plain random-token masking (eval_ref_mlm_*), "
        "the same masks for every objective, so that runs with different objectives compare",
    )

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
        if not 0 < self.span_p <= 1:
            out.append(f"objective.span_p={self.span_p} must be in (0, 1]")
        if not 0 < self.rtd_generator_hidden <= 1:
            out.append(f"objective.rtd_generator_hidden={self.rtd_generator_hidden} must be in (0, 1]")
        if self.rtd_weight <= 0:
            out.append(f"objective.rtd_weight={self.rtd_weight} must be > 0")
        if self.span_max_words < 1:
            out.append(f"objective.span_max_words={self.span_max_words} must be >= 1")
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
    precision: str = _f(
        "auto",
        "auto (bf16 autocast on GPUs and CPUs with native bf16 support, else fp32) | fp32 | bf16 | fp16",
    )
    threads: int | None = _f(None, "CPU threads for torch (default: all cores of this process)")
    compile: bool = _f(
        False, "torch.compile the training forward pass (compiles for a while first; see docs/performance.md)"
    )
    fast_dropout: bool = _f(
        True,
        "CPU: hidden-state dropout with a cheaper random mask (same drop rate to 1/65536; see "
        "docs/performance.md); attention-probability dropout follows train.fast_attention",
    )
    fast_attention: bool = _f(
        True,
        "CPU training: attention by plain matmuls with the cheaper dropout mask instead of SDPA's "
        "(used with dropout or bf16; see docs/performance.md)",
    )
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
        if self.model.init_vectors and self.model.init_from:
            out.append(
                "model.init_vectors starts a fresh model's embeddings from word vectors; model.init_from "
                "already brings trained ones: set only one"
            )
        if self.data.block_size > self.model.max_position_embeddings:
            out.append(
                f"data.block_size={self.data.block_size} exceeds "
                f"model.max_position_embeddings={self.model.max_position_embeddings}"
            )
        return out


# --- fine-tuning (`lmvalue finetune`) ---------------------------------------------------------
# The shared sections are reused where they fit (ModelConfig, TrainConfig); the two subclasses
# below only add fields and change defaults, so the training loop takes them as they are.

TASK_KINDS = ("auto", "classification", "pair", "tagging")
TASK_METRICS = ("auto", "accuracy", "macro_f1", "entity_f1", "token_accuracy")


@dataclass
class FinetuneModelConfig(ModelConfig):
    init_from: str | None = _f(
        None, "start from: an lmvalue run folder, a Hugging Face checkpoint folder or a hub name"
    )
    tokenizer: str | None = _f(
        None, "tokenizer folder or hub name, for model.from_scratch with a preset (default: the checkpoint's)"
    )
    from_scratch: bool = _f(
        False,
        "random init of the same architecture and tokenizer (model.init_from's, or model.preset + "
        "model.tokenizer): the no-pretraining baseline",
    )
    new_head: bool = _f(
        False, "train a new task head instead of the checkpoint's own (needed when its labels differ)"
    )
    pooling: str = _f(
        "cls",
        "sentence tasks: cls (the architecture's own head, on the [CLS] state) | mean (the pooler on the mean "
        "of the last hidden states over real tokens; for models whose [CLS] state was never trained)",
    )
    reinit_layers: int = _f(
        0, "re-initialise the top N encoder layers and the pooler before fine-tuning (0: keep all)"
    )
    head_init: str = _f(
        "zero",
        "sentence tasks: zero (a new head starts at zero) | probe (LP-FT, Kumar et al. 2022: the head starts "
        "as a logistic regression fitted on the frozen features it reads, then everything is fine-tuned)",
    )


@dataclass
class LabeledDataConfig:
    source: str = _f(
        "demo:zh-reviews",
        "labeled examples: .csv/.tsv/.jsonl/.json/.parquet, a CoNLL file, hf:NAME[:CONFIG][:SPLIT], "
        "demo:zh-reviews, demo:zh-news:ner or demo:zh-news:pos",
    )
    test: str | None = _f(None, "labeled test set; none: carve data.test_size examples out of data.source")
    test_size: float = _f(
        2000, "test examples carved out of data.source when data.test is unset (< 1: a share)"
    )
    test_seed: int = _f(
        0, "seed of the carved test split (fixed: independent of the budget and training seeds)"
    )
    text_column: str = _f("text", "column (field) holding the text; for tagging files: the tokens")
    text_pair_column: str | None = _f(None, "column holding the second text of sentence-pair tasks")
    label_column: str = _f("label", "column (field) holding the label; for tagging files: the tags")
    encoding: str = _f("utf-8", "text encoding of local files")
    errors: str = _f("strict", "what to do with undecodable bytes: strict | replace | ignore")
    max_docs: int | None = _f(None, "read at most this many examples from each source")
    dedupe: bool = _f(True, "drop repeated inputs before splitting, so no text is in both train and test")
    max_length: int = _f(128, "longest input in tokens; longer inputs are truncated")

    def problems(self) -> list[str]:
        out = []
        if self.errors not in ("strict", "replace", "ignore"):
            out.append(f"data.errors={self.errors!r} must be strict, replace or ignore")
        if self.test_size <= 0:
            out.append(f"data.test_size={self.test_size} must be > 0")
        if self.max_length < 8:
            out.append(f"data.max_length={self.max_length} is too small (at least 8)")
        return out


@dataclass
class TaskConfig:
    kind: str = _f(
        "auto",
        "classification | pair | tagging; auto: tagging for CoNLL files, demo:zh-news:* and JSON Lines of "
        "tokens/tags, "
        "pair when data.text_pair_column is set, else classification",
    )
    metric: str = _f(
        "auto",
        "score for model selection and the headline: accuracy | macro_f1 | entity_f1 | token_accuracy; "
        "auto: macro_f1 (classification), entity_f1 (BIO/BIOES tags), token_accuracy (other tags)",
    )
    labels: list[str] | None = _f(
        None, "the label set in order (default: the training data's labels, sorted)"
    )
    unknown_labels: str = _f(
        "error", "test labels the training data lacks: error | keep (kept and scored as errors)"
    )

    def problems(self) -> list[str]:
        out = []
        if self.kind not in TASK_KINDS:
            out.append(f"task.kind={self.kind!r} must be one of {', '.join(TASK_KINDS)}")
        if self.metric not in TASK_METRICS:
            out.append(f"task.metric={self.metric!r} must be one of {', '.join(TASK_METRICS)}")
        if self.unknown_labels not in ("error", "keep"):
            out.append(f"task.unknown_labels={self.unknown_labels!r} must be error or keep")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            out.append("task.labels has repeated labels")
        return out


@dataclass
class BudgetConfig:
    train_size: int | None = _f(None, "labeled examples to use (train + dev), drawn stratified by label")
    per_class: int | None = _f(None, "or: labeled examples per class (train + dev)")
    dev_fraction: float = _f(
        0.2, "share of the budget held out (stratified) as the dev split for model selection"
    )
    seed: int | None = _f(None, "seed of the draw (default: train.seed)")
    strict: bool = _f(False, "refuse a budget larger than the data instead of using all of it")

    def problems(self) -> list[str]:
        out = []
        if self.train_size is not None and self.per_class is not None:
            out.append("budget.train_size and budget.per_class exclude each other; set one")
        for name in ("train_size", "per_class"):
            value = getattr(self, name)
            if value is not None and value < 1:
                out.append(f"budget.{name}={value} must be >= 1")
        if not 0 <= self.dev_fraction < 1:
            out.append(f"budget.dev_fraction={self.dev_fraction} must be in [0, 1)")
        return out


@dataclass
class LoraOptions:
    r: int = _f(8, "lora: rank of the update")
    alpha: float = _f(16, "lora/adalora: scaling numerator (the update is scaled by alpha / r)")
    dropout: float = _f(0.1, "lora/adalora: dropout on the adapter input")
    target_modules: list[str] | None = _f(
        None, "lora/adalora/ia3: module names to adapt (default: peft's choice for the architecture)"
    )


@dataclass
class AdaloraOptions:
    init_r: int = _f(12, "adalora: starting rank of every adapted matrix")
    target_r: int = _f(4, "adalora: average rank after the budget is reallocated")
    tinit: float = _f(0.1, "adalora: share of the run before ranks are pruned")
    tfinal: float = _f(0.2, "adalora: share at the end of the run with the final ranks fixed")
    delta_t: int = _f(1, "adalora: steps between two reallocations")


@dataclass
class PrefixOptions:
    num_virtual_tokens: int = _f(20, "prefix/prompt-tuning: learned virtual tokens")


@dataclass
class AdapterOptions:
    kind: str = _f(
        "houlsby", "adapter: houlsby (after attention and feed-forward) | pfeiffer (after feed-forward)"
    )
    size: int = _f(64, "adapter: bottleneck width")


@dataclass
class NgramOptions:
    analyzer: str = _f(
        "auto",
        "tfidf/nbsvm/hybrid: char | word | auto (char n-grams when most letters are CJK, else word n-grams)",
    )
    range: list[int] | None = _f(None, "tfidf/nbsvm/hybrid: [min, max] n-gram length (default [1, 2])")


@dataclass
class LogregOptions:
    c: list[float] = _f(
        [0.1, 1.0, 10.0],
        "tfidf/nbsvm/embeddings/hybrid/probe: inverse regularization strengths of the logistic regression, "
        "tried on the dev split",
    )


@dataclass
class VectorOptions:
    source: str | None = _f(
        None,
        "embeddings/hybrid: text to learn word vectors from (file, folder, demo:NAME; cached), or a vectors "
        "file (.kv, word2vec .bin/.vec)",
    )
    dim: int = _f(200, "embeddings/hybrid: vector size")
    epochs: int = _f(5, "embeddings/hybrid: word2vec passes over the text")
    min_count: int = _f(3, "embeddings/hybrid: ignore words seen fewer times")


@dataclass
class ProbeOptions:
    layers: str = _f("all", "probe: hidden states averaged: all (embedding output and every layer) | last")
    chunks: bool = _f(
        False,
        "probe: read a text longer than data.max_length as consecutive windows and average over all of "
        "them (long documents; costs one encoder pass per window), instead of the first window only",
    )


@dataclass
class PromptingOptions:
    file: str | None = _f(
        None, "zero-shot/pet/in-context: YAML file with templates: [...] and verbalizer: {label: [words]}"
    )
    templates: list[str] | None = _f(
        None,
        "zero-shot/pet/in-context: cloze templates with {text} and one {mask} (instead of method.prompting.file)",
    )
    verbalizer: str | None = _f(None, "zero-shot/pet/in-context: label words, e.g. 'pos=好|不错,neg=差'")
    calibrate: bool = _f(
        True,
        "zero-shot/in-context: subtract each label's score on an empty input (contextual calibration, "
        "Zhao et al. 2021); pet learns its own biases",
    )


# The flat option names of lmvalue <= 0.2 (still read from old model folders, YAML files and overrides).
LEGACY_METHOD_OPTIONS = {
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "target_modules": "lora.target_modules",
    "adalora_init_r": "adalora.init_r",
    "adalora_target_r": "adalora.target_r",
    "adalora_tinit": "adalora.tinit",
    "adalora_tfinal": "adalora.tfinal",
    "adalora_delta_t": "adalora.delta_t",
    "num_virtual_tokens": "prefix.num_virtual_tokens",
    "adapter_kind": "adapter.kind",
    "adapter_size": "adapter.size",
    "tfidf_analyzer": "ngrams.analyzer",
    "tfidf_ngrams": "ngrams.range",
    "tfidf_c": "logreg.c",
    "vectors_dim": "vectors.dim",
    "vectors_epochs": "vectors.epochs",
    "vectors_min_count": "vectors.min_count",
    "probe_layers": "probe.layers",
    "prompt": "prompting.file",
    "templates": "prompting.templates",
    "verbalizer": "prompting.verbalizer",
    "calibrate": "prompting.calibrate",
}


@dataclass
class MethodConfig:
    """The method and its options, one section per method (or per family sharing them): the registry
    entry of a method (:data:`lmvalue.methods.METHODS`) names the sections it reads."""

    name: str = _f(
        "full",
        "full | lora | adalora | ia3 | prefix | prompt-tuning | adapter | tfidf | nbsvm | embeddings | hybrid "
        "| probe | zero-shot | pet | in-context",
    )
    merge: bool = _f(False, "also write merged/, a plain transformers model with the adapter folded in")
    lora: LoraOptions = field(default_factory=LoraOptions)
    adalora: AdaloraOptions = field(default_factory=AdaloraOptions)
    prefix: PrefixOptions = field(default_factory=PrefixOptions)
    adapter: AdapterOptions = field(default_factory=AdapterOptions)
    ngrams: NgramOptions = field(default_factory=NgramOptions)
    logreg: LogregOptions = field(default_factory=LogregOptions)
    vectors: VectorOptions = field(default_factory=VectorOptions)
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    prompting: PromptingOptions = field(default_factory=PromptingOptions)

    @staticmethod
    def upgrade(data: dict) -> dict:
        """Old flat spellings (``lora_r``, ``method.vectors=PATH``, ``method.prompt=FILE``) to sections."""
        out: dict = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name == "vectors" and not isinstance(value, dict):
                name, value = "vectors.source", value
            elif name in LEGACY_METHOD_OPTIONS:
                name = LEGACY_METHOD_OPTIONS[name]
            section, _, option = name.partition(".")
            if option:
                node = out.setdefault(section, {})
                if isinstance(node, dict):
                    node[option] = value
                    continue
            if isinstance(value, dict):
                out[name] = {**value, **out.get(name, {})} if isinstance(out.get(name), dict) else dict(value)
            else:
                out[name] = value
        return out

    def problems(self) -> list[str]:
        """Checks of the values alone; what needs the method registry (is the name known, can it
        merge, which options it requires) is :func:`lmvalue.methods.config_problems`."""
        out = []
        for where, value in (
            ("lora.r", self.lora.r),
            ("adalora.init_r", self.adalora.init_r),
            ("adalora.target_r", self.adalora.target_r),
            ("prefix.num_virtual_tokens", self.prefix.num_virtual_tokens),
            ("adapter.size", self.adapter.size),
        ):
            if value < 1:
                out.append(f"method.{where}={value} must be >= 1")
        if self.adalora.target_r > self.adalora.init_r:
            out.append("method.adalora.target_r must be <= method.adalora.init_r")
        if not 0 <= self.adalora.tinit + self.adalora.tfinal < 1:
            out.append("method.adalora.tinit + method.adalora.tfinal must be in [0, 1)")
        if self.adapter.kind not in ("houlsby", "pfeiffer"):
            out.append(f"method.adapter.kind={self.adapter.kind!r} must be houlsby or pfeiffer")
        if self.probe.layers not in ("all", "last"):
            out.append(f"method.probe.layers={self.probe.layers!r} must be all or last")
        if self.ngrams.analyzer not in ("auto", "char", "word"):
            out.append(f"method.ngrams.analyzer={self.ngrams.analyzer!r} must be auto, char or word")
        if self.ngrams.range is not None and (
            len(self.ngrams.range) != 2 or not 1 <= self.ngrams.range[0] <= self.ngrams.range[1]
        ):
            out.append(f"method.ngrams.range={self.ngrams.range} must be [min, max] with 1 <= min <= max")
        if not self.logreg.c or any(c <= 0 for c in self.logreg.c):
            out.append(f"method.logreg.c={self.logreg.c} must list inverse regularization strengths > 0")
        return out


@dataclass
class FinetuneTrainConfig(TrainConfig):
    output_dir: str = _f("runs/finetune", "folder for the model, config and metrics")
    batch_size: int = _f(16, "examples per micro-batch per process")
    lr: float = _f(1e-4, "peak learning rate (parameter-efficient methods usually want ~1e-3)")
    warmup: float = _f(0.1, "warm-up length: a fraction of the run (< 1) or a number of steps (>= 1)")
    max_steps: int = _f(2000, "at most this many optimizer steps")
    epochs: float | None = _f(
        10, "passes over the training split (within train.min_steps..train.max_steps); none: train.max_steps"
    )
    min_steps: int = _f(100, "at least this many optimizer steps, however small the budget")
    evals: int | None = _f(
        10, "evaluations on the dev split over the run (none: every train.eval_every steps)"
    )
    select_best: bool = _f(True, "keep the weights of the best dev evaluation instead of the last")
    group_by_length: int = _f(
        50,
        "batch examples of similar length: the shuffled epoch is cut into windows of this many batches, "
        "each sorted by length (less padding, faster steps); 0: plain random batches",
    )
    llrd: float | None = _f(
        None,
        "layer-wise learning-rate decay: the top layer and the head train at train.lr, each layer below "
        "at this factor times the one above, the embeddings last (e.g. 0.8); none: one rate for all",
    )
    lr_search: list[float] | None = _f(
        None,
        "train once per learning rate in this list and keep the run with the best dev score (replaces "
        "train.lr; the test split is still scored once, with the winner); guards against runs that "
        "diverge or do not move at one fixed rate, at the cost of one run per rate",
    )
    checkpoints: bool = _f(False, "write resumable checkpoints (fine-tuning runs are short)")
    save_model: bool = _f(True, "write the fine-tuned model (off: metrics only, e.g. inside a value study)")


@dataclass
class ConsistencyConfig:
    """Consistency training on unlabeled text (UDA, Xie et al. 2019): a KL term between the model's
    prediction on an unlabeled text and on an augmented copy, beside the labeled loss."""

    unlabeled: str | None = _f(
        None,
        "unlabeled texts (a file of one text per line, or any text source) to train the consistency term "
        "on; none: no consistency training",
    )
    weight: float = _f(1.0, "weight of the consistency term against the labeled loss (UDA's lambda)")
    augment: str = _f(
        "mask",
        "how the augmented copy is made: mask (tokens replaced by [MASK]) | random (by random tokens) | "
        "drop (tokens deleted)",
    )
    rate: float = _f(0.3, "share of a text's tokens the augmentation changes")
    ratio: int = _f(2, "unlabeled texts per labeled example in each step")
    temperature: float = _f(
        0.4, "sharpening of the target distribution (the prediction on the original text); 1: none"
    )
    threshold: float = _f(
        0.6, "unlabeled texts whose original prediction is less confident than this are left out of the term"
    )
    tsa: str = _f(
        "linear",
        "training-signal annealing: labeled examples predicted above a threshold that rises from 1/classes to "
        "1 over the run (none | linear | log | exp) are left out of the labeled loss, so a few labels are "
        "not memorised before the unlabeled term has shaped the model",
    )

    def problems(self) -> list[str]:
        out = []
        if self.augment not in ("mask", "random", "drop"):
            out.append(f"consistency.augment={self.augment!r} must be mask, random or drop")
        if self.tsa not in ("none", "linear", "log", "exp"):
            out.append(f"consistency.tsa={self.tsa!r} must be none, linear, log or exp")
        if not 0 < self.rate < 1:
            out.append(f"consistency.rate={self.rate} must be in (0, 1)")
        if self.ratio < 1:
            out.append(f"consistency.ratio={self.ratio} must be >= 1")
        if self.weight < 0:
            out.append(f"consistency.weight={self.weight} must be >= 0")
        if self.temperature <= 0:
            out.append(f"consistency.temperature={self.temperature} must be > 0")
        if not 0 <= self.threshold < 1:
            out.append(f"consistency.threshold={self.threshold} must be in [0, 1)")
        return out


@dataclass
class FinetuneConfig:
    """`lmvalue finetune`: train a task model on a label budget and score it on the test split."""

    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: LabeledDataConfig = field(default_factory=LabeledDataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)

    def problems(self) -> list[str]:
        """Checks of the values alone; what depends on the method (does it start from a model, read an
        encoder, have a task head) is :func:`lmvalue.methods.config_problems`."""
        out = list(self.consistency.problems())
        if self.model.from_scratch and not self.model.init_from and not self.model.tokenizer:
            out.append(
                "model.from_scratch with a preset needs model.tokenizer (the tokenizer to build it for)"
            )
        if self.model.pooling not in ("cls", "mean"):
            out.append(f"model.pooling={self.model.pooling!r} must be cls or mean")
        if self.model.head_init not in ("zero", "probe"):
            out.append(f"model.head_init={self.model.head_init!r} must be zero or probe")
        if self.model.reinit_layers < 0:
            out.append(f"model.reinit_layers={self.model.reinit_layers} must be >= 0")
        if self.train.llrd is not None and not 0 < self.train.llrd <= 1:
            out.append(f"train.llrd={self.train.llrd} must be in (0, 1] (e.g. 0.8), or none")
        if self.train.min_steps > self.train.max_steps:
            out.append(
                f"train.min_steps={self.train.min_steps} exceeds train.max_steps={self.train.max_steps}"
            )
        if self.train.epochs is not None and self.train.epochs <= 0:
            out.append(f"train.epochs={self.train.epochs} must be > 0")
        if self.train.evals is not None and self.train.evals < 1:
            out.append(f"train.evals={self.train.evals} must be >= 1")
        if self.train.lr_search is not None:
            if not self.train.lr_search or any(lr <= 0 for lr in self.train.lr_search):
                out.append(f"train.lr_search={self.train.lr_search} must list learning rates > 0")
            if self.train.resume:
                out.append("train.lr_search cannot be resumed; rerun it with train.overwrite=true")
        if self.data.max_length > self.model.max_position_embeddings and self.model.from_scratch:
            out.append(
                f"data.max_length={self.data.max_length} exceeds "
                f"model.max_position_embeddings={self.model.max_position_embeddings}"
            )
        return out


# ---------------------------------------------------------------------------------------------
# `lmvalue value` and `lmvalue continual`: flat configs (their CLI flags are generated from these
# fields: ``--name-with-dashes``, or ``flag`` in the metadata).

# every way to use the unlabeled text measured to pay on one of the five dev tasks (docs/value-recipes.md),
# next to scratch and both label-only baselines; the pretrained:mlm variants share one pretraining run
DEFAULT_ARMS = (
    "scratch",
    "pretrained:mlm",
    "pretrained:mlm+lpft",
    "pretrained:mlm/probe-hybrid",
    "tfidf",
    "nbsvm",
    "embeddings",
    "hybrid",
)
# where a study's cells run (lmvalue.value.scaling)
EXECUTORS = ("local", "ray")


@dataclass
class StudyConfig:
    """`lmvalue value`: arms x label budgets x seeds (saved in study.json). The checks that need the
    arm grammar and the plug-in registries are :func:`lmvalue.value.study.study_problems`."""

    output_dir: str = _f("runs/study", "study folder", flag="--output", short="-o")
    data: str = _f(
        "demo:zh-reviews", "labeled examples (the train pool; and the test set unless --test)", required=True
    )
    test: str | None = _f(None, "labeled test set (default: carve --test-size examples out of --data)")
    test_size: int = _f(2000, "test examples carved out of --data when there is no --test")
    text_column: str = _f("text", "text column of --data / --test")
    label_column: str = _f("label", "label column of --data / --test")
    corpus: str | None = _f(
        None, "unlabeled text for pretraining (default: the training pool's texts, never the test texts)"
    )
    arms: list[str] = _f(
        list(DEFAULT_ARMS),
        "arms to compare: scratch, pretrained:OBJ[+OBJ], checkpoint:NAME, continued:NAME, tfidf, nbsvm, "
        "embeddings, hybrid, prompt:zero, prompt:pet; a fine-tuning method as suffix, e.g. pretrained:mlm/lora; "
        "one arm's own pretraining settings after '@', e.g. pretrained:mlm@model.preset=mini,data.block_size=64 "
        "(a tokenizer.* setting gives the arm its own tokenizer: pretrained:mlm@tokenizer.vocab_size=30000); "
        "ARM+self self-trains an arm on the corpus (embeddings+self, nbsvm+self, pretrained:mlm+self); "
        "ARM+lpft fine-tunes with LP-FT and mean pooling (pretrained:mlm+lpft); ARM+uda adds consistency training; "
        "distill:TEACHER trains the study's pretrained transformer on TEACHER's pseudo-labels "
        "(distill:embeddings+self)",
    )
    budgets: list[int] | None = _f(None, "label budgets (default: 16 x classes, 100, 300, 1000, all)")
    seeds: int = _f(5, "seeds per budget")
    metric: str = _f("accuracy", "headline test metric")
    # The recipe measured to pay on a CPU budget (docs/value-recipes.md): the `tiny` BERT, 20 minutes of
    # masked-LM pretraining at lr 1e-3, and a learning-rate search in every fine-tuning cell.
    preset: str = _f("tiny", "architecture of the scratch and pretrained arms")
    vocab_size: int = _f(8000, "vocabulary of the tokenizer trained on the corpus")
    pretrain_minutes: float | None = _f(
        20.0,
        "pretraining budget per arm in minutes of wall time (not reproducible across machines; on the command "
        "line, default 20 unless --pretrain-steps is given)",
    )
    pretrain_steps: int | None = _f(
        None,
        "pretraining budget per arm in optimizer steps: the same on every machine, so a study run twice gives "
        "the same models and scores (with --pretrain-minutes too, whichever comes first)",
    )
    pretrain_max_steps: int = _f(100_000, "the step cap when only minutes are given", flag=None)
    encoding: str = _f("utf-8", "encoding of the --data, --test and --corpus files, e.g. gb18030")
    errors: str = _f(
        "strict",
        "undecodable bytes: stop with an error (strict), replace with U+FFFD, or drop them (ignore)",
        choices=("strict", "replace", "ignore"),
    )
    pretrain_overrides: dict = _f(
        {},
        "pretraining overrides for every arm, KEY=VALUE (pretrained:* arms default to train.lr=1e-3)",
        flag="--pretrain",
    )
    finetune_overrides: dict = _f(
        {},
        "fine-tuning overrides for every cell, KEY=VALUE (scratch and pretrained:* cells default to "
        "train.lr_search=[3e-4,1e-3] unless train.lr or train.lr_search is given)",
        flag="--finetune",
    )
    prompt: str | None = _f(
        None, "templates and verbalizer (YAML) for the prompt:zero / prompt:pet arms (docs/prompting.md)"
    )
    recipe: bool = _f(
        True,
        "pretrained:* arms train at lr 1e-3 and scratch/pretrained cells search the fine-tuning rate, under the "
        "overrides (a cell whose overrides set train.lr or train.lr_search gets no search)",
        flag=None,
    )
    unlabeled_max: int = _f(
        20_000, "+self and distill: arms pseudo-label at most this many corpus texts, a seeded sample"
    )
    self_train_rounds: int = _f(
        3, "at most this many self-training rounds; each cell keeps the best on its dev split"
    )
    self_train_fractions: list[float] = _f(
        [0.1, 0.3, 1.0],
        "shares of the unlabeled pool offered as pseudo-labels in each round, most confident first; each cell "
        "keeps the best on its dev split",
    )
    distill_epochs: float = _f(1.0, "passes of a distill: student over labels + pseudo-labels")
    distill_targets: str = _f(
        "hard",
        "a distill: student learns the teacher's argmax labels (hard: measured better on demo:zh-reviews) or "
        "its class distributions (soft)",
        choices=("soft", "hard"),
    )
    resume: bool = _f(False, "finish an interrupted study; finished cells are kept")
    overwrite: bool = _f(False, "replace an existing study in --output")
    # Where the cells run (docs/scaling.md); none of these change a cell's result, so a study may be
    # resumed under another executor.
    executor: str = _f(
        "local",
        "where the cells run: local (this machine, --workers processes) or ray (Ray core tasks on a local Ray "
        "runtime or the cluster at --ray-address; pip install 'lmvalue[ray]')",
        choices=EXECUTORS,
    )
    workers: int = _f(
        1,
        "local: cells run side by side in this many worker processes, each with its share of the CPU cores "
        "(or one GPU each); 1 runs them one after another in this process",
    )
    ray_address: str | None = _f(
        None,
        "ray: the cluster to run on (the address `ray start --head` prints, or auto); default: start a Ray "
        "runtime on this machine",
    )
    cpus_per_cell: int | None = _f(
        None,
        "CPU threads of one cell or pretraining task (default: local, the cores divided among --workers; "
        "ray, 1)",
    )
    gpus_per_cell: float | None = _f(
        None,
        "ray: GPUs of one network cell or pretraining task (default: 1 when the cluster has GPUs, else 0; "
        "scikit-learn cells take none)",
    )
    cell_retries: int = _f(
        2,
        "a cell (or pretraining) whose worker process died (killed, out of memory) runs again at most this "
        "many times, then is recorded as failed with the reason",
    )

    def problems(self) -> list[str]:
        import codecs

        out = []
        if self.executor not in EXECUTORS:
            out.append(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.workers < 1:
            out.append(f"--workers must be >= 1, got {self.workers}")
        if self.executor == "ray" and self.workers != 1:
            out.append(
                "--workers sets the worker processes of --executor local; Ray places the tasks itself "
                "(size them with --cpus-per-cell / --gpus-per-cell)"
            )
        if self.ray_address and self.executor != "ray":
            out.append("--ray-address needs --executor ray")
        if self.cpus_per_cell is not None and self.cpus_per_cell < 1:
            out.append(f"--cpus-per-cell must be >= 1, got {self.cpus_per_cell}")
        if self.gpus_per_cell is not None and self.gpus_per_cell < 0:
            out.append(f"--gpus-per-cell must be >= 0, got {self.gpus_per_cell:g}")
        if self.gpus_per_cell and self.executor != "ray":
            out.append(
                "--gpus-per-cell applies to --executor ray; local workers take one GPU each when there are GPUs"
            )
        if self.cell_retries < 0:
            out.append(f"--cell-retries must be >= 0, got {self.cell_retries}")
        if self.pretrain_minutes is not None and not self.pretrain_minutes > 0:
            out.append(f"--pretrain-minutes must be > 0, got {self.pretrain_minutes:g}")
        if self.pretrain_steps is not None and self.pretrain_steps < 1:
            out.append(f"--pretrain-steps must be >= 1, got {self.pretrain_steps}")
        if self.test_size is not None and self.test is None and self.test_size < 1:
            out.append(f"--test-size must be >= 1, got {self.test_size}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            out.append(f"--encoding {self.encoding!r} is not a known text encoding (e.g. utf-8, gb18030)")
        if self.seeds < 1:
            out.append(f"--seeds must be >= 1, got {self.seeds}")
        if self.budgets is not None and any(b < 2 for b in self.budgets):
            small = ", ".join(str(b) for b in self.budgets if b < 2)
            out.append(f"--budgets: every budget must be >= 2 labeled examples, got {small}")
        if self.preset not in MODEL_PRESETS and any(
            a.split(":")[0].split("/")[0].split("@")[0] in ("scratch", "pretrained") for a in self.arms
        ):
            out.append(f"--preset {self.preset!r} is unknown; choose one of {', '.join(MODEL_PRESETS)}")
        if self.resume and self.overwrite:
            out.append("resume and overwrite exclude each other")
        if self.unlabeled_max < 1:
            out.append(f"--unlabeled-max must be >= 1, got {self.unlabeled_max}")
        if not 1 <= self.self_train_rounds <= 10:
            out.append(f"--self-train-rounds must be between 1 and 10, got {self.self_train_rounds}")
        if not self.self_train_fractions or any(not 0 < f <= 1 for f in self.self_train_fractions):
            out.append(
                f"--self-train-fractions must be shares of the pool in (0, 1], got {self.self_train_fractions}"
            )
        if self.distill_targets not in ("soft", "hard"):
            out.append(f"--distill-targets must be soft or hard, got {self.distill_targets!r}")
        if not self.distill_epochs > 0:
            out.append(f"--distill-epochs must be > 0, got {self.distill_epochs:g}")
        return out


REGULARIZERS = ("none", "l2sp", "ewc")


@dataclass
class Stage:
    """One stage of `lmvalue continual`: a corpus, and optionally its own time or step budget."""

    source: str
    name: str | None = None
    max_minutes: float | None = None
    max_steps: int | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", self.name or self.source).strip("_")


@dataclass
class ContinualConfig:
    """Settings of `lmvalue continual` (saved as ``continual.yaml`` in the output folder)."""

    output_dir: str = _f("runs/continual", "output folder", flag="--output", short="-o")
    stages: list[Stage] = _f(
        [], "the corpora, in order: [- source: CORPUS, name:, max_minutes:, max_steps:]", flag=None
    )
    previous: list[str] = _f(
        [], "corpora the starting model was trained on (measured, not trained)", flag=None
    )
    replay: float = _f(0.0, "share of every batch drawn from earlier corpora (0..1)")
    regularizer: str = _f("none", "pull towards the stage's start weights", choices=("none", "l2sp", "ewc"))
    reg_weight: float = _f(1.0, "regularization weight")
    fisher_batches: int = _f(
        20, "ewc: batches of the earlier corpora the Fisher information is estimated on", flag=None
    )
    eval_max_blocks: int = _f(128, "held-out blocks per corpus in the forgetting matrix", flag=None)
    pretrain: dict = _f({}, "PretrainConfig settings shared by every stage", flag=None)
    resume: bool = _f(False, "continue an interrupted sequence")
    overwrite: bool = _f(False, "replace an existing output folder")

    @classmethod
    def from_dict(cls, d: dict) -> ContinualConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"continual: unknown setting(s) {unknown}; known: {sorted(known)}")
        stages = []
        for i, s in enumerate(d.pop("stages", None) or []):
            if isinstance(s, str):
                s = {"source": s}
            if not isinstance(s, dict) or "source" not in s:
                raise ConfigError(f"continual: stage {i + 1} needs a source (e.g. - source: demo:zh-reviews)")
            bad = sorted(set(s) - {f.name for f in dataclasses.fields(Stage)})
            if bad:
                raise ConfigError(f"continual: stage {i + 1} has unknown setting(s) {bad}")
            stages.append(Stage(**s))
        cfg = cls(stages=stages, **d)
        problems = cfg.problems()
        if problems:
            raise ConfigError("continual: " + "; ".join(problems))
        return cfg

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> ContinualConfig:
        d = load_yaml(path)
        d.update(overrides or {})
        return cls.from_dict(d)

    def problems(self) -> list[str]:
        out = []
        if not self.stages:
            out.append("no stages: give stages: [- source: CORPUS, ...]")
        if not 0 <= self.replay < 1:
            out.append(f"replay={self.replay} must be a share in [0, 1)")
        if self.regularizer not in REGULARIZERS:
            out.append(f"regularizer={self.regularizer!r} must be one of {', '.join(REGULARIZERS)}")
        if self.reg_weight < 0:
            out.append("reg_weight must be >= 0")
        if self.resume and self.overwrite:
            out.append("resume and overwrite exclude each other")
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    if hasattr(cls, "upgrade"):
        data = cls.upgrade(data)
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


def load_yaml(path: str | Path, *, what: str = "config file") -> dict:
    """A YAML mapping from ``path``; a missing, unreadable, non-UTF-8 or malformed file is a ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a file: give the path of a .yaml file")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}; check its permissions") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def build_config(
    cls,
    *,
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    checks: Sequence[Callable[[Any], list[str]]] = (),
):
    """Defaults, then the YAML file, then dotted overrides; validated; every problem reported at once.

    ``checks``: more ``cfg -> problems`` functions from the layers that own the plug-in registries
    (e.g. :func:`lmvalue.methods.config_problems` for a :class:`FinetuneConfig`); the recipes run
    them again on entry, so a config built without them cannot run an unknown method.
    """
    data: dict = load_yaml(yaml_path) if yaml_path else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    cfg = from_dict(cls, data)
    validate(cfg, checks)
    return cfg


def validate(cfg, checks: Sequence[Callable[[Any], list[str]]] = ()) -> None:
    """Raise one :class:`ConfigError` listing every problem of ``cfg``, its sections and ``checks``."""
    problems: list[str] = []
    if hasattr(cfg, "problems"):
        problems += cfg.problems()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and hasattr(value, "problems"):
            problems += value.problems()
    for check in checks:
        problems += check(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def save_yaml(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")
