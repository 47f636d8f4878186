"""Fine-tuning methods by name: how a task model is made trainable, saved, loaded and merged.

Every method is one :class:`Method` record of plain functions in :data:`METHODS`; an unknown name
is a configuration error. ``full`` trains every weight; ``lora``, ``adalora``, ``ia3`` and
``prompt-tuning`` are thin over ``peft``; ``prefix`` and ``adapter`` are small implementations of
our own (``peft``'s prefix tuning relies on ``past_key_values`` arguments that BERT no longer takes
in transformers 5, and ``peft`` has no bottleneck adapters; the maintained ``adapters`` library
pins transformers 4.x). ``tfidf`` is the classical baseline and trains no network; ``zero-shot`` and ``pet`` prompt a masked
LM with a cloze template (:mod:`lmvalue.prompting`).

Parameter-efficient methods save only what they train (adapter weights *and* the task head) in
the model folder, next to a copy of the untouched base model in ``base/``, so a folder is complete
on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmvalue.methods import adapters, embeddings, hybrid, nbsvm, peft_methods, prefix, probe, tfidf


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to know about the run it is applied in."""

    level: str  # "sequence" or "token"
    total_steps: int = 0


@dataclass(frozen=True)
class Method:
    """One fine-tuning method.

    Attributes:
        apply: ``(model, method_cfg, context) -> model to train`` (freezes what is not trained);
            None for methods that train no network (tfidf).
        save: write the method's trained weights into a folder (the base is saved by the caller).
        load: ``(base_model, folder, method_cfg) -> trained model``.
        merge: ``model -> plain transformers model`` with the method folded in; None: cannot merge.
        on_step: ``(model, step)`` after every optimizer step, before gradients are cleared.
        finalize: ``model`` once after training, before the final evaluation and saving.
        prepends_tokens: the outputs include virtual tokens in front of the input (prompt tuning).
        family: ``network`` (a task model trained through ``apply``), ``classical`` (features +
            logistic regression, fitted by ``trainer``) or ``prompt`` (a language model asked a cloze
            or in-context question, :mod:`lmvalue.prompting`).
        trainer: for ``classical`` methods, the module that fits, describes, saves and loads them
            (``prepare(cfg)``, ``train(...)``, ``describe(info)``, ``save(pipe, folder)``, ``load(folder)``).
        uses_model: it starts from a checkpoint or preset (``model.*`` settings apply).
        needs_encoder: it reads an existing pretrained encoder (no ``model.from_scratch``).
        trains_every_weight: no weight is frozen (``model.reinit_layers`` may apply).
        sections: the sections of ``method.*`` it reads (:class:`lmvalue.config.MethodConfig`).
        required: ``{option: why}``: ``method.<option>`` settings it cannot run without.
    """

    name: str
    summary: str
    apply: Callable | None
    save: Callable[..., None] | None = None
    load: Callable | None = None
    merge: Callable | None = None
    on_step: Callable | None = None
    finalize: Callable | None = None
    prepends_tokens: bool = False
    family: str = "network"
    trainer: object = None
    uses_model: bool = True
    needs_encoder: bool = False
    trains_every_weight: bool = False
    sections: tuple[str, ...] = ()
    required: dict[str, str] = field(default_factory=dict)

    @property
    def headless(self) -> bool:
        """No network task head: ``model.pooling`` / ``model.reinit_layers`` do not apply."""
        return self.family != "network"

    @property
    def can_merge(self) -> bool:
        return self.merge is not None

    @property
    def keeps_base(self) -> bool:
        """The saved folder holds only the trained part, plus the base model in ``base/``."""
        return self.family == "network" and self.name != "full"


def _full(model, cfg, ctx):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _save_full(model, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)


METHODS: dict[str, Method] = {
    "full": Method(
        "full",
        "every weight is trained",
        apply=_full,
        save=_save_full,
        merge=lambda m: m,
        trains_every_weight=True,
    ),
    "lora": Method(
        "lora",
        "low-rank updates of the attention projections (peft)",
        apply=peft_methods.apply,
        save=peft_methods.save,
        load=peft_methods.load,
        merge=peft_methods.merge,
        sections=("lora",),
    ),
    "adalora": Method(
        "adalora",
        "LoRA whose rank budget is reallocated by importance during training (peft)",
        apply=peft_methods.apply,
        save=peft_methods.save,
        load=peft_methods.load,
        merge=peft_methods.merge,
        on_step=peft_methods.adalora_step,
        finalize=peft_methods.adalora_finalize,
        sections=("lora", "adalora"),
    ),
    "ia3": Method(
        "ia3",
        "learned rescaling of keys, values and feed-forward activations (peft)",
        apply=peft_methods.apply,
        save=peft_methods.save,
        load=peft_methods.load,
        merge=peft_methods.merge,
        sections=("lora",),
    ),
    "prompt-tuning": Method(
        "prompt-tuning",
        "learned virtual input tokens (peft)",
        apply=peft_methods.apply,
        save=peft_methods.save,
        load=peft_methods.load,
        prepends_tokens=True,
        sections=("prefix",),
    ),
    "prefix": Method(
        "prefix",
        "learned key/value prefixes in every attention layer",
        apply=prefix.apply,
        save=prefix.save,
        load=prefix.load,
        sections=("prefix",),
    ),
    "adapter": Method(
        "adapter",
        "bottleneck adapters (Houlsby: after attention and feed-forward; Pfeiffer: after feed-forward)",
        apply=adapters.apply,
        save=adapters.save,
        load=adapters.load,
        sections=("adapter",),
    ),
    "tfidf": Method(
        "tfidf",
        "TF-IDF n-grams + logistic regression (scikit-learn)",
        apply=None,
        family="classical",
        trainer=tfidf,
        uses_model=False,
        sections=("ngrams", "logreg"),
    ),
    "nbsvm": Method(
        "nbsvm",
        "binary n-grams x naive-Bayes log-count ratios + logistic regression (NB-LR, Wang & Manning 2012)",
        apply=None,
        family="classical",
        trainer=nbsvm,
        uses_model=False,
        sections=("ngrams", "logreg"),
    ),
    "embeddings": Method(
        "embeddings",
        "word2vec vectors learned from unlabeled text, averaged + logistic regression",
        apply=None,
        family="classical",
        trainer=embeddings,
        uses_model=False,
        required={
            "vectors.source": "a text corpus to learn word vectors from (a file, folder or demo:NAME), or a saved "
            "vectors file (.kv, word2vec .bin/.vec)"
        },
        sections=("vectors", "logreg"),
    ),
    "hybrid": Method(
        "hybrid",
        "word2vec vectors learned from unlabeled text, averaged, next to TF-IDF n-grams + one logistic regression",
        apply=None,
        family="classical",
        trainer=hybrid,
        uses_model=False,
        required={
            "vectors.source": "a text corpus to learn word vectors from (a file, folder or demo:NAME), or a saved "
            "vectors file (.kv, word2vec .bin/.vec)"
        },
        sections=("vectors", "ngrams", "logreg"),
    ),
    "probe": Method(
        "probe",
        "a frozen encoder's mean-pooled hidden states + logistic regression (linear probe)",
        apply=None,
        family="classical",
        trainer=probe,
        needs_encoder=True,
        sections=("probe", "logreg"),
    ),
    "probe-hybrid": Method(
        "probe-hybrid",
        "a frozen encoder's mean-pooled hidden states next to TF-IDF n-grams + one logistic regression",
        apply=None,
        family="classical",
        trainer=probe.HYBRID,
        needs_encoder=True,
        sections=("probe", "ngrams", "logreg"),
    ),
    # Prompt methods ask a masked LM the task as a cloze question (lmvalue.prompting).
    "zero-shot": Method(
        "zero-shot",
        "cloze prompt of the masked LM, no training (labels only score it)",
        apply=None,
        family="prompt",
        sections=("prompting",),
    ),
    "pet": Method(
        "pet",
        "cloze prompt whose label-word scores are trained on the budget (PET)",
        apply=None,
        family="prompt",
        sections=("prompting",),
    ),
    "in-context": Method(
        "in-context",
        "causal LM prompted with the budget's examples as demonstrations, no training",
        apply=None,
        family="prompt",
        sections=("prompting",),
    ),
}


def get_method(name: str) -> Method:
    """The method called ``name``.

    Raises:
        ConfigError: no such method.
    """
    from lmvalue.errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def config_problems(cfg) -> list[str]:
    """What makes a fine-tuning config (:class:`lmvalue.config.FinetuneConfig`) wrong for its method:
    the checks that need this registry, run by ``build_config(..., checks=[config_problems])`` and by
    :func:`lmvalue.finetuning.finetune` on entry."""
    out = []
    name, model = cfg.method.name, cfg.model
    method = METHODS.get(name)
    if method is None:
        return [f"method.name={name!r} is unknown; choose one of {', '.join(METHODS)}"]
    if cfg.method.merge and not method.can_merge:
        out.append(
            f"method.merge: {name} cannot be merged into the base weights "
            f"(mergeable: {', '.join(n for n, m in METHODS.items() if m.can_merge)}); drop --merge"
        )
    for option, why in method.required.items():
        value = cfg.method
        for part in option.split("."):
            value = getattr(value, part)
        if not value:
            out.append(f"method {name} needs method.{option}: {why}")
    if getattr(cfg, "consistency", None) and cfg.consistency.unlabeled and method.family != "network":
        out.append(
            f"consistency.unlabeled: consistency training trains a network; method {name} is "
            f"{method.family} (use full or a parameter-efficient method, or drop consistency.unlabeled)"
        )
    if method.uses_model and not model.init_from and not model.from_scratch:
        out.append(
            "no starting point: set model.init_from (a pretrained run, checkpoint folder or hub name), "
            "or model.from_scratch=true (with model.init_from, or model.preset and model.tokenizer)"
        )
    if method.needs_encoder and (model.from_scratch or not model.init_from):
        out.append(
            f"method {name} reads the features of a pretrained encoder: set model.init_from (a pretrained "
            "run, checkpoint folder or hub name) and leave model.from_scratch off"
        )
    if method.headless:
        if model.head_init == "probe":
            out.append(f"model.head_init=probe fits a task head; method {name} has none")
        if model.pooling != "cls" or model.reinit_layers:
            out.append(f"model.pooling / model.reinit_layers shape a task head; method {name} has none")
    elif model.reinit_layers > 0 and not method.trains_every_weight:
        out.append(
            f"model.reinit_layers needs method full: {name} would freeze the re-initialised "
            "layers at random weights"
        )
    return out
