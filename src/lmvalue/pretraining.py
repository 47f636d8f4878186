"""`lmvalue pretrain`: a tokenizer (trained or given), a model (preset or checkpoint), packed
blocks of the unlabeled text, self-supervised objectives, and the shared training loop."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmvalue.checkpoint import RunDir, finish_run, mark_failed, read_json, run_info, write_json_atomic
from lmvalue.config import PretrainConfig, save_yaml
from lmvalue.data.annotate import Segmenter, TokenizedCorpus, join_words, tokenize_annotated
from lmvalue.data.annotated import AnnotatedCache, cached_annotated, cached_annotated_blocks, cached_pairs
from lmvalue.data.layout import layout_rows
from lmvalue.data.packing import BlockBatches, eval_batches, pack_blocks, split_documents
from lmvalue.data.shards import TokenCache, cached_blocks, cached_tokens
from lmvalue.data.sources import iter_texts, load_tagged_texts, load_texts
from lmvalue.errors import ConfigError, DataError
from lmvalue.loop import make_accelerator, param_checksum, resolve_precision, train_loop
from lmvalue.models import build_lm, count_parameters, is_decoder
from lmvalue.objectives import (
    ObjectiveModule,
    ObjectiveSet,
    build_objectives,
    check_objectives,
    objective_needs,
    pair_kind,
    reference_mlm_applies,
)
from lmvalue.objectives.mlm import MaskedLM
from lmvalue.tokenizer import load_tokenizer, train_tokenizer

log = logging.getLogger("lmvalue")


def save_hf(model, tokenizer, cfg):
    """A saver for checkpoint folders: weights + tokenizer + the run's config, loadable by transformers."""

    def save(m, folder: Path):
        m.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        save_yaml(cfg, folder / "lmvalue_config.yaml")

    return save


def load_hf_weights(model, folder: Path) -> None:
    """Load ``model.safetensors`` from a checkpoint folder into ``model`` (tied weights allowed missing)."""
    from lmvalue.weights import load_safetensors

    state = load_safetensors(folder / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }
    real_missing = [k for k in missing if k not in tied and not k.endswith("decoder.bias")]
    if real_missing or unexpected:
        raise RuntimeError(
            f"checkpoint {folder} does not match the model: missing {real_missing}, unexpected {unexpected}"
        )


def get_tokenizer(cfg: PretrainConfig, run: RunDir, resume_from: Path | None, accelerator):
    """The run's tokenizer: given, the checkpoint's own, the resumed run's, or trained on the data."""
    if resume_from is not None:
        return load_tokenizer(resume_from)
    if cfg.model.tokenizer:
        return load_tokenizer(cfg.model.tokenizer)
    if cfg.model.init_from:
        return load_tokenizer(cfg.model.init_from)
    target = run.path / "tokenizer"
    if accelerator.is_main_process:
        t0 = time.perf_counter()
        texts = iter_texts(cfg.data.source, **source_kwargs(cfg))
        train_tokenizer(
            texts,
            target,
            kind=cfg.tokenizer.kind,
            vocab_size=cfg.tokenizer.vocab_size,
            lowercase=cfg.tokenizer.lowercase,
            max_docs=cfg.tokenizer.max_docs,
            min_frequency=cfg.tokenizer.min_frequency,
            model_max_length=cfg.model.max_position_embeddings,
        )
        log.info(
            "trained a %s tokenizer in %.1fs -> %s", cfg.tokenizer.kind, time.perf_counter() - t0, target
        )
    accelerator.wait_for_everyone()
    return load_tokenizer(target)


def source_kwargs(cfg: PretrainConfig) -> dict:
    d = cfg.data
    return dict(
        text_column=d.text_column,
        encoding=d.encoding,
        errors=d.errors,
        paragraphs=d.paragraphs,
        max_docs=d.max_docs,
    )


@dataclass
class PretrainingData:
    """The tokenized corpus, split into training and held-out documents, as rows for the objectives.

    Rows are packed blocks, or ``[CLS] A [SEP] B [SEP]`` pairs when a sentence-pair objective is
    on (see :func:`lmvalue.data.layout.layout_rows`).
    """

    corpus: TokenizedCorpus
    train_docs: np.ndarray
    eval_docs: np.ndarray
    layout: dict  # keyword arguments of layout_rows: block_size, sep_id, cls_id, pad_id, pair_kind
    held_out: dict[str, np.ndarray]
    packed_held_out: np.ndarray  # plain packed held-out blocks (the reference MLM evaluation)
    tag_labels: list[str] | None
    seed: int
    stats: dict = field(default_factory=dict)
    token_cache: TokenCache | AnnotatedCache | None = None  # the corpus is memory-mapped from the token cache
    cache_dir: str | None = None
    _cache: dict = field(default_factory=dict)

    def train(self, epoch: int) -> dict[str, np.ndarray]:
        """Training rows of ``epoch``: the packed blocks, or sentence pairs drawn afresh each epoch."""
        key = epoch if self.layout["pair_kind"] else 0
        if key not in self._cache:
            self._cache.clear()  # one epoch at a time
            if isinstance(self.token_cache, AnnotatedCache):
                # Rows streamed from the annotated cache into the cache, read a few rows per batch.
                lay = self.layout
                if lay["pair_kind"]:
                    rows = cached_pairs(
                        self.token_cache,
                        self.train_docs,
                        lay["block_size"],
                        kind=lay["pair_kind"],
                        seed=(self.seed, key),
                        cls_id=lay["cls_id"],
                        sep_id=lay["sep_id"],
                        pad_id=lay["pad_id"],
                        cache_dir=self.cache_dir,
                    )
                else:
                    rows = cached_annotated_blocks(
                        self.token_cache,
                        self.train_docs,
                        lay["block_size"],
                        sep_id=lay["sep_id"],
                        cls_id=lay["cls_id"],
                        cache_dir=self.cache_dir,
                    )
                self._cache[key] = rows
            elif self.token_cache is not None and not self.layout["pair_kind"] and not self.corpus.fields:
                blocks = cached_blocks(
                    self.token_cache,
                    self.train_docs,
                    self.layout["block_size"],
                    sep_id=self.layout["sep_id"],
                    cls_id=self.layout["cls_id"],
                    cache_dir=self.cache_dir,
                )
                self._cache[key] = {"input_ids": blocks}
            else:
                self._cache[key] = layout_rows(
                    self.corpus, self.train_docs, seed=(self.seed, key), **self.layout
                )
        return self._cache[key]


def _read_corpus(
    cfg: PretrainConfig, tokenizer, needs: set[str]
) -> tuple[TokenizedCorpus, list[str] | None, int, TokenCache | None, dict]:
    """Tokenize the corpus with the annotations ``needs`` asks for; return it, the tag vocabulary,
    the number of characters, the token-cache entry (or None) and tokenization stats."""
    if not needs and cfg.data.cache and getattr(tokenizer, "backend_tokenizer", None) is not None:
        kwargs = source_kwargs(cfg)
        try:
            entry, stats = cached_tokens(
                lambda: iter_texts(cfg.data.source, **kwargs), tokenizer, cache_dir=cfg.data.cache_dir
            )
        except DataError:
            load_texts(cfg.data.source, **kwargs)  # the source's own message for an empty corpus
            raise
        corpus = TokenizedCorpus(ids=entry.ids, offsets=entry.offsets)
        return corpus, None, entry.info["characters"], entry, stats
    fields = []
    if "word_start" in needs:
        fields.append("word_start")
    if "pairs" in needs:
        fields.append("segment_start")
    d = cfg.data
    segmenter = Segmenter(hmm=d.jieba_hmm, user_dict=d.jieba_user_dict)
    if "tags" in needs:
        fields.append("tag_labels")
    if d.cache and getattr(tokenizer, "backend_tokenizer", None) is not None:
        kwargs = source_kwargs(cfg)

        def stream():
            if "tags" in needs:
                return load_tagged_texts(d.source, encoding=d.encoding, errors=d.errors, max_docs=d.max_docs)
            return iter_texts(d.source, **kwargs)

        try:
            entry, stats = cached_annotated(
                stream,
                tokenizer,
                fields=fields,
                segmenter=segmenter,
                cache_dir=d.cache_dir,
                workers=d.tokenize_workers or None,
                progress=cfg.train.progress,
            )
        except DataError:
            if "tags" not in needs:
                load_texts(d.source, **source_kwargs(cfg))  # the source's own message for an empty corpus
            raise
        return entry.corpus(), entry.tag_labels, entry.info["characters"], entry, stats
    word_tags = tag_labels = None
    if "tags" in needs:
        tagged = list(load_tagged_texts(d.source, encoding=d.encoding, errors=d.errors, max_docs=d.max_docs))
        tag_labels = sorted({t for _, tags in tagged for t in tags})
        index = {t: i for i, t in enumerate(tag_labels)}
        texts, word_tags = [], []
        for words, tags in tagged:
            text, starts = join_words(words)
            texts.append(text)
            word_tags.append((starts, np.array([index[t] for t in tags], dtype=np.int64)))
        del tagged
    else:
        texts = load_texts(cfg.data.source, **source_kwargs(cfg))
    t0 = time.perf_counter()
    corpus = tokenize_annotated(texts, tokenizer, fields=fields, word_tags=word_tags, segmenter=segmenter)
    dt = time.perf_counter() - t0
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    stats = {"hit": False, "tokenize_s": round(dt, 3), "mb_per_s": round(n_bytes / 1e6 / max(dt, 1e-9), 2)}
    return corpus, tag_labels, sum(len(t) for t in texts), None, stats


def prepare_data(cfg: PretrainConfig, tokenizer, needs: set[str] | None = None) -> PretrainingData:
    """Tokenize the corpus (with the annotations the objectives need), hold out documents, and lay
    both parts out as packed blocks or sentence pairs."""
    t0 = time.perf_counter()
    needs = needs or set()
    corpus, tag_labels, n_chars, token_cache, tok_stats = _read_corpus(cfg, tokenizer, needs)
    train_docs, eval_docs = split_documents(len(corpus.offsets) - 1, cfg.data.eval_fraction, cfg.train.seed)
    decoder = is_decoder(cfg.model.arch) if not cfg.model.init_from else tokenizer.cls_token_id is None
    sep = tokenizer.eos_token_id if decoder else tokenizer.sep_token_id
    cls = None if decoder else tokenizer.cls_token_id
    if sep is None:
        raise DataError("the tokenizer has no separator/end-of-text token to put between documents")
    bs, limit = cfg.data.block_size, cfg.data.eval_max_blocks
    layout = dict(
        block_size=bs,
        sep_id=sep,
        cls_id=cls,
        pad_id=tokenizer.pad_token_id,
        pair_kind=pair_kind(cfg.objective.names),
    )
    # Only the documents of the first eval_max_blocks blocks (sentence pairs: of four times as many
    # tokens, as pairs are padded): reading every held-out document of a memory-mapped corpus would
    # map most of it. With or without the cache, so that both evaluate on the same rows.
    need = (limit + 1) * bs * (4 if layout["pair_kind"] else 1)
    covered = np.cumsum(corpus.offsets[eval_docs + 1] - corpus.offsets[eval_docs] + 1)
    packed_eval_docs = eval_docs[: int(np.searchsorted(covered, need)) + 1]
    held_out = layout_rows(corpus, packed_eval_docs, seed=(cfg.train.seed, 10**6), **layout)
    if len(held_out["input_ids"]) == 0:
        raise DataError(
            f"the held-out documents ({len(eval_docs)}) do not fill one block of {bs} tokens; "
            "raise data.eval_fraction or lower data.block_size"
        )
    data = PretrainingData(
        corpus=corpus,
        train_docs=train_docs,
        eval_docs=eval_docs,
        layout=layout,
        held_out={k: v[:limit] for k, v in held_out.items()},
        packed_held_out=pack_blocks(corpus.ids, corpus.offsets, packed_eval_docs, bs, sep_id=sep, cls_id=cls)[
            :limit
        ],
        tag_labels=tag_labels,
        seed=cfg.train.seed,
        token_cache=token_cache,
        cache_dir=cfg.data.cache_dir,
    )
    data.stats = {
        "documents": int(len(corpus.offsets) - 1),
        "characters": int(n_chars),
        "tokens": int(len(corpus.ids)),
        "train_blocks": int(len(data.train(0)["input_ids"])),
        "eval_blocks": int(len(data.held_out["input_ids"])),
        "tokenize_s": round(time.perf_counter() - t0, 2),
        "tokenize_mb_per_s": tok_stats.get("mb_per_s"),
        "token_cache": ("hit" if tok_stats["hit"] else "written") if token_cache is not None else "off",
    }
    if layout["pair_kind"]:
        data.stats["layout"] = f"{layout['pair_kind']} pairs"
    return data


def pretrain(cfg: PretrainConfig, *, replay: dict | None = None, regularizer=None) -> dict:
    """Run self-supervised pretraining as configured; return the final metrics.

    The final model is saved in ``<output_dir>/model`` and loads with
    ``transformers.AutoModelForMaskedLM`` (or ``AutoModelForCausalLM`` for decoders).

    Continual runs (:mod:`lmvalue.continual`) pass ``replay`` (``{"blocks": old packed blocks,
    "share": s}``: that share of every batch is old text) and ``regularizer``
    (``(model, tokenizer) -> penalty(model)``, called once the starting weights are loaded; the
    penalty is added to the loss and logged as ``reg_loss``).
    """
    cfg = copy.deepcopy(cfg)  # this run's own copy: the caller's config is never changed
    # Unknown or incompatible objectives fail here, before a tokenizer is trained.
    check_objectives(cfg.objective.names, None if cfg.model.init_from else cfg.model.arch)
    if cfg.model.init_from:  # a missing or wrong folder is named as the checkpoint it should be
        from lmvalue.weights import resolve_checkpoint

        resolve_checkpoint(cfg.model.init_from)
    accelerator = make_accelerator(cfg.train)
    if not accelerator.is_main_process:  # one process speaks
        log.setLevel(logging.WARNING)
        cfg.train.progress = False
    run = RunDir(cfg.train.output_dir)
    resume_from = None
    if accelerator.is_main_process:
        resume_from = run.prepare(resume=cfg.train.resume, overwrite=cfg.train.overwrite)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process and cfg.train.resume:
        resume_from = run.latest_checkpoint()
    if accelerator.is_main_process:
        save_yaml(cfg, run.path / "config.yaml")
        previous = (
            read_json(run.path / "run.json") if resume_from and (run.path / "run.json").is_file() else {}
        )
        write_json_atomic(
            run.path / "run.json",
            run_info(
                cfg,
                "running",
                started=previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
                resumed_from=str(resume_from) if resume_from else None,
                processes=accelerator.num_processes,
            ),
        )

    try:
        return _pretrain_run(cfg, run, resume_from, accelerator, replay, regularizer)
    except BaseException as err:
        if accelerator.is_main_process:
            # A run that stops before its first checkpoint leaves a folder the same command can be
            # rerun in (RunDir.prepare clears a failed run with nothing to resume); a later failure
            # keeps its checkpoints for --resume.
            mark_failed(run, err)
        raise


def _pretrain_run(cfg: PretrainConfig, run: RunDir, resume_from, accelerator, replay, regularizer) -> dict:
    tokenizer = get_tokenizer(cfg, run, resume_from, accelerator)
    data = prepare_data(cfg, tokenizer, objective_needs(cfg.objective.names))
    data_stats = data.stats
    model = build_lm(cfg.model, tokenizer, seed=cfg.train.seed)
    vectors_info = None
    if cfg.model.init_vectors and not cfg.model.init_from and resume_from is None:
        from lmvalue.data.sources import iter_texts
        from lmvalue.vector_init import init_embeddings

        # Every process trains the same vectors (one gensim worker, the same seed): no broadcast needed.
        texts = iter_texts(cfg.data.source, **source_kwargs(cfg))
        vectors_info = init_embeddings(model, tokenizer, texts, seed=cfg.train.seed)
    # The objectives attach their heads (sentence-pair, tags) to the model before it is counted,
    # optimized or saved; training runs through one module so that DDP sees every head.
    objectives = build_objectives(cfg.objective, tokenizer, model=model, tag_labels=data.tag_labels)
    trainee = ObjectiveModule(model, objectives)
    trainable, total = count_parameters(model)
    penalty = regularizer(model, tokenizer) if regularizer is not None else None
    if replay is not None and (data.layout["pair_kind"] or data.corpus.fields):
        raise ConfigError(
            "replay mixes packed blocks of plain text: use it with mlm or clm objectives "
            f"(not {'+'.join(cfg.objective.names)})"
        )
    if accelerator.is_main_process:
        log.info(
            "data: %(documents)d documents, %(tokens)d tokens -> %(train_blocks)d train / %(eval_blocks)d held-out blocks",
            data_stats,
        )
        log.info(
            "model: %s, %.2fM parameters (%.2fM trainable)",
            type(model).__name__,
            total / 1e6,
            trainable / 1e6,
        )

    rank, world = accelerator.process_index, accelerator.num_processes

    def epoch_batches(epoch: int):
        rows = data.train(epoch)
        if replay is not None:
            from lmvalue.data.packing import MixedBatches

            return MixedBatches(
                rows["input_ids"],
                replay["blocks"],
                cfg.train.batch_size,
                replay["share"],
                seed=cfg.train.seed,
                epoch=epoch,
                prepare=objectives.prepare,
                rank=rank,
                world=world,
            )
        return BlockBatches(
            rows["input_ids"],
            cfg.train.batch_size,
            seed=cfg.train.seed,
            epoch=epoch,
            prepare=objectives.prepare,
            rank=rank,
            world=world,
            fields={k: v for k, v in rows.items() if k != "input_ids"},
        )

    held = data.held_out
    fields = {k: v for k, v in held.items() if k != "input_ids"}
    eval_set = eval_batches(
        held["input_ids"], cfg.train.batch_size, objectives.prepare, seed=cfg.train.seed, fields=fields
    )
    # Every encoder is also scored by plain random-token MLM on the same packed held-out blocks with
    # the same masks, whatever it was trained with: the one loss that compares objectives.
    reference = None
    if (
        cfg.objective.reference_mlm
        and reference_mlm_applies(cfg.objective.names)
        and data.layout["cls_id"] is not None
        and tokenizer.mask_token_id is not None
    ):
        reference = ObjectiveSet([MaskedLM.from_config(tokenizer, cfg.objective)], [1.0])
        reference_set = eval_batches(
            data.packed_held_out, cfg.train.batch_size, reference.prepare, seed=cfg.train.seed
        )

    def on_device(batches):
        return [{k: v.to(accelerator.device) for k, v in b.items()} for b in batches]

    def evaluate(m):
        metrics = objectives.evaluate(m.lm, on_device(eval_set))
        if reference is not None:
            ref = reference.evaluate(m.lm, on_device(reference_set))
            metrics.update(
                {k.replace("eval_", "eval_ref_", 1): v for k, v in ref.items() if k != "eval_loss"}
            )
        return metrics

    def loss_fn(m, batch):
        parts = m(batch)
        if penalty is not None:
            reg = penalty(model)
            parts = {**parts, "reg_loss": reg.detach(), "loss": parts["loss"] + reg}
        return parts

    save = save_hf(model, tokenizer, cfg)
    t0 = time.perf_counter()
    state = train_loop(
        model=trainee,
        loss_fn=loss_fn,
        epoch_batches=epoch_batches,
        evaluate=evaluate,
        cfg=cfg.train,
        run=run,
        accelerator=accelerator,
        save_model=lambda m, folder: save(m.lm, folder),
        load_model=lambda m, folder: load_hf_weights(m.lm, folder),
        resume_from=resume_from,
        num_workers=cfg.data.num_workers,
    )
    wall = time.perf_counter() - t0
    final = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    first_eval = state.evals[0] if state.evals else {}
    metrics = {
        "objectives": objectives.names,
        "steps": state.step,
        "tokens": state.tokens,
        "train_seconds": round(state.elapsed, 2),
        "tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
        "stop_reason": state.stop_reason,
        "best": state.best,
        "best_step": state.best_step,
        "final": state.evals[-1] if state.evals else {},
        "first_eval": first_eval,
        "evals": state.evals,
        "data": data_stats,
        "parameters": {"total": total, "trainable": trainable},
        "processes": world,
        "precision": resolve_precision(cfg.train.precision),
        "wall_seconds_this_session": round(wall, 2),
        "init_vectors": vectors_info,
    }
    # Each process records what it saw and where it ended (checked by the multi-process test).
    metrics["model_dir"] = str(run.path / "model")
    rank_info = {
        "rank": rank,
        "param_checksum": param_checksum(final),
        "first_batch_blocks": epoch_batches(0).indices(0).tolist(),
    }
    (run.path / "ranks").mkdir(exist_ok=True)
    write_json_atomic(run.path / "ranks" / f"rank{rank}.json", rank_info)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model_dir = run.write_dir_atomic("model", lambda folder: save(final, folder))
        finish_run(run, metrics, [model_dir])
    accelerator.wait_for_everyone()
    return metrics
