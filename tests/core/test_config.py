"""Config validation: every error names the key, the value and what is allowed, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptune.config import RunConfig, apply_override, load_config, validate_config
from adaptune.errors import ConfigError
from adaptune.methods.bottleneck import BottleneckConfig
from adaptune.tasks.token_cls import TokenClsConfig


def test_defaults_are_a_bottleneck_classifier() -> None:
    cfg = RunConfig()
    assert isinstance(cfg.method, BottleneckConfig)
    assert cfg.method.reduction_factor == 16
    assert cfg.task.name == "seq_cls"


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "method: {name: bottleneck, placement: houlsby}\ntask: {name: token_cls}\ndata: {train: data/train.conll}\n",
        encoding="utf-8",
    )
    cfg = load_config(path, ["training.epochs=2", "method.reduction_factor=8", "data.batch_size=4"])
    assert cfg.training.epochs == 2 and cfg.method.reduction_factor == 8 and cfg.data.batch_size == 4
    assert isinstance(cfg.task, TokenClsConfig)
    assert cfg.method.placement == "houlsby"
    assert cfg.data.train == str((tmp_path / "data" / "train.conll").resolve()), "paths are relative to the YAML"


def test_stack_member_adapter_paths_are_relative_to_the_yaml(tmp_path: Path) -> None:
    path = tmp_path / "configs" / "stack.yaml"
    path.parent.mkdir()
    path.write_text(
        "method:\n  name: stack\n  members:\n"
        "    - {name: lang, adapter: ../runs/lang/adapter, trainable: false}\n"
        "    - {name: task, method: {name: bottleneck}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:  # validation reads the member folder, which is looked for here:
        load_config(path)
    assert f"adapter folder {(tmp_path / 'runs' / 'lang' / 'adapter').resolve()} does not exist" in str(err.value)


def test_misspelt_key_names_it_and_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["training.lerning_rate=0.1"])
    message = str(err.value)
    assert "training.lerning_rate" in message and "did you mean 'learning_rate'" in message


def test_misspelt_method_key() -> None:
    with pytest.raises(ConfigError, match=r"method.reduction_facter.*did you mean 'reduction_factor'"):
        validate_config({"method": {"name": "bottleneck", "reduction_facter": 8}})


def test_value_out_of_range_names_key_value_and_bound() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["training.warmup_ratio=1.5"])
    assert "training.warmup_ratio" in str(err.value) and "1.5" in str(err.value) and "less than 1" in str(err.value)


def test_bad_choice_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"training.scheduler.*'exp'.*'linear', 'cosine' or 'constant'"):
        load_config(None, ["training.scheduler=exp"])


def test_unknown_method_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"method.name.*'lorra'.*allowed: .*bottleneck.*head"):
        validate_config({"method": {"name": "lorra"}})


def test_bad_method_value() -> None:
    with pytest.raises(ConfigError, match=r"method.activation.*'sigmoid'"):
        validate_config({"method": {"name": "bottleneck", "activation": "sigmoid"}})


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "training.epochs")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"training": 3}, "training.epochs=2")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_fingerprint_ignores_cosmetic_keys() -> None:
    a = load_config(None, ["training.output_dir=a", "training.progress=false"])
    b = load_config(None, ["training.output_dir=b"])
    c = load_config(None, ["training.seed=7"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_every_bundled_config_validates() -> None:
    folder = Path(__file__).resolve().parents[2] / "src" / "adaptune" / "configs"
    repo_configs = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(folder.glob("*.yaml")) + sorted(repo_configs.glob("*.yaml"))
    assert files
    for path in files:
        load_config(path)


def test_override_values_are_yaml_except_indicators() -> None:
    tree: dict = {}
    for assignment in (
        "data.label_separator=|",
        "data.column_names=[a, b]",
        "training.max_steps=null",
        "training.bf16=true",
        "model.name_or_path=>weird",
    ):
        apply_override(tree, assignment)
    assert tree["data"] == {"label_separator": "|", "column_names": ["a", "b"]}
    assert tree["training"] == {"max_steps": None, "bf16": True}
    assert tree["model"]["name_or_path"] == ">weird"
