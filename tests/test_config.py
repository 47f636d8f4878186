import dataclasses
from pathlib import Path

import pytest

from lmvalue.config import FinetuneConfig, PretrainConfig, build_config, to_dict
from lmvalue.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_validate():
    cfg = build_config(PretrainConfig)
    assert cfg.objective.names == ["mlm"]
    assert cfg.model.dims() == {"num_layers": 2, "hidden": 128, "heads": 2, "ffn": 512}


def test_dotted_overrides_are_typed():
    cfg = build_config(
        PretrainConfig,
        overrides={
            "train.lr": "1e-3",
            "train.max_steps": "50",
            "train.max_minutes": "none",
            "objective.names": "mlm,sop",
            "objective.weights": "[1, 0.5]",
            "train.resume": "false",
        },
    )
    assert cfg.train.lr == 1e-3 and cfg.train.max_steps == 50 and cfg.train.max_minutes is None
    assert cfg.objective.names == ["mlm", "sop"] and cfg.objective.weights == [1.0, 0.5]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: mini\ntrain:\n  lr: 0.01\n  seed: 3\n")
    cfg = build_config(PretrainConfig, yaml_path=path, overrides={"train.seed": 7})
    assert cfg.model.preset == "mini" and cfg.train.lr == 0.01 and cfg.train.seed == 7


def test_every_problem_reported_at_once():
    with pytest.raises(ConfigError) as e:
        build_config(
            PretrainConfig,
            overrides={
                "model.preset": "huge",
                "train.lr": -1,
                "train.optimizer": "adam9",
                "data.block_size": 2,
            },
        )
    msg = str(e.value)
    for part in ("model.preset='huge'", "train.lr=-1", "adam9", "data.block_size=2"):
        assert part in msg


def test_unknown_and_badly_typed_options():
    with pytest.raises(ConfigError) as e:
        build_config(PretrainConfig, overrides={"train.lrr": 1, "train.max_steps": "many"})
    assert "train.lrr" in str(e.value) and "known in this section" in str(e.value)
    assert "train.max_steps: expected int" in str(e.value)


# The config class of every command a shipped YAML may open with.
COMMAND_CONFIGS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


def _flat(d, prefix=""):
    from lmvalue.continual import _flat as flat

    return flat(d, prefix)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# lmvalue "), "every preset opens with the command that runs it"
    command = first.split()[2]
    if command == "prompt":  # templates and verbalizer, not a run config
        from lmvalue.prompting import PromptSpec

        assert f"--prompt configs/{path.name}" in first, "the first line is the command that uses this file"
        spec = PromptSpec.load(path)
        assert spec.templates and len(spec.labels) >= 2
        return
    if command == "continual":  # stages of pretraining runs
        from lmvalue.continual import ContinualConfig

        assert f"--config configs/{path.name}" in first
        cfg = ContinualConfig.load(path)
        assert cfg.stages
        build_config(PretrainConfig, overrides=_flat(cfg.pretrain))
        return
    assert command in COMMAND_CONFIGS, f"{path.name} opens with an unknown command {command!r}"
    assert f"--config configs/{path.name}" in first, "the first line is the command that runs this file"
    cfg = build_config(COMMAND_CONFIGS[command], yaml_path=path)
    assert to_dict(cfg)


def test_method_options_are_grouped_and_old_flat_spellings_still_load():
    """Model folders, YAML files and overrides written with lmvalue <= 0.2's flat method options."""
    from lmvalue.config import LEGACY_METHOD_OPTIONS, MethodConfig, from_dict
    from lmvalue.methods import METHODS

    old = {
        "name": "lora",
        "lora_r": 4,
        "tfidf_c": [2.0],
        "vectors": "corpus.txt",
        "vectors_dim": 16,
        "prompt": "p.yaml",
    }
    cfg = from_dict(MethodConfig, old)
    assert (cfg.lora.r, cfg.logreg.c, cfg.vectors.source, cfg.vectors.dim) == (4, [2.0], "corpus.txt", 16)
    assert cfg.prompting.file == "p.yaml" and cfg.lora.alpha == 16  # untouched options keep defaults
    new = build_config(FinetuneConfig, overrides={"method.lora.r": 4, "method.vectors.source": "corpus.txt"})
    assert new.method.lora.r == 4 and new.method.vectors.source == "corpus.txt"
    with pytest.raises(ConfigError, match="lora_rank"):
        build_config(FinetuneConfig, overrides={"method.lora_rank": 4})  # a typo is still an error
    with pytest.raises(ConfigError, match="method.lora.r=0 must be >= 1"):
        build_config(FinetuneConfig, overrides={"method.lora.r": 0})
    sections = {f.name for f in dataclasses.fields(MethodConfig)}
    for name, method in METHODS.items():  # every section a method says it reads exists
        assert set(method.sections) <= sections, name
    for flat, dotted in LEGACY_METHOD_OPTIONS.items():
        assert dotted.split(".")[0] in sections, flat
