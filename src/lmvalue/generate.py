"""`lmvalue generate`: sample continuations from a causal LM pretrained with ``clm``."""

from __future__ import annotations

from pathlib import Path

import torch

from lmvalue.errors import CheckpointError, ConfigError
from lmvalue.weights import from_pretrained


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder from a run folder (its ``model/``), a checkpoint or a model folder itself."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    raise CheckpointError(
        f"{path} is neither an lmvalue run folder (with model/) nor a model folder (with config.json)"
    )


def check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples) -> None:
    """Every sampling setting that cannot work, in one ConfigError, before the model is loaded."""
    problems = []
    if max_new_tokens < 1:
        problems.append(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not temperature >= 0:
        problems.append(f"--temperature must be >= 0 (0: greedy), got {temperature:g}")
    if top_k is not None and top_k < 1:
        problems.append(f"--top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"--top-p must be in (0, 1], got {top_p:g}")
    if num_samples < 1:
        problems.append(f"--num-samples must be >= 1, got {num_samples}")
    if problems:
        raise ConfigError("; ".join(problems))


def generate(
    model: str | Path,
    prompt: str,
    *,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = 1.0,
    num_samples: int = 1,
    seed: int = 0,
) -> list[str]:
    """Continuations of ``prompt`` sampled from a causal LM (``temperature=0``: greedy).

    Args:
        model: a run folder, a checkpoint folder or a model folder with its tokenizer.
        top_k, top_p: keep the k most likely tokens / the smallest set with probability >= p.
    Returns:
        ``num_samples`` generated continuations (without the prompt).
    Raises:
        ConfigError: the model is not a causal LM (e.g. a masked-LM encoder).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lmvalue.models import is_decoder

    check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples)

    folder = resolve_model_dir(model)
    config = AutoConfig.from_pretrained(folder)
    if not is_decoder(config):
        raise ConfigError(
            f"{folder} holds a {config.model_type} encoder (masked LM); generate needs a causal LM: "
            "pretrain one with model.arch=gpt2 (or llama), tokenizer.kind=bpe and objective.names=[clm]"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lm = from_pretrained(AutoModelForCausalLM, folder).eval()
    # Training saw every document after an end-of-text token, so the prompt starts the same way.
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, T)
    if tokenizer.eos_token_id is not None:
        ids = torch.cat([torch.tensor([[tokenizer.eos_token_id]]), ids], dim=1)
    torch.manual_seed(seed)
    sample = temperature > 0
    with torch.no_grad():
        out = lm.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=sample,
            temperature=temperature if sample else None,
            top_k=top_k if sample else None,
            top_p=top_p if sample else None,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples,
            pad_token_id=tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        )  # (num_samples, T + new)
    return tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
