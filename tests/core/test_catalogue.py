"""``adaptune methods`` and ``adaptune config [--schema]``: generated from the registries and the config models, and
the same as the Python API (:mod:`adaptune.catalogue`) they are thin over."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from adaptune.catalogue import config_schema, list_methods, method_info
from adaptune.cli import app
from adaptune.config import RunConfig, validate_config
from adaptune.errors import ConfigError
from adaptune.registry import build_method, method_names, method_registration, task_names

runner = CliRunner()


def test_methods_table_lists_every_registered_method() -> None:
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│")}
    assert set(method_names()) <= rows
    assert "adaptune config --schema" in result.output


def test_methods_json_comes_from_the_registry() -> None:
    result = runner.invoke(app, ["methods", "--format", "json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed == [info.as_dict() for info in list_methods()]
    assert [item["name"] for item in listed] == method_names()
    for item in listed:
        assert item["tasks"] == task_names()
        assert item["trains"] == method_registration(item["name"]).summary != ""
        if item["config"] is not None:  # the rate and refusals a method built from its defaults declares
            method = build_method(validate_config({"method": item["config"]}).method)
            assert item["default_learning_rate"] == method.default_learning_rate
            assert item["unsupported_model_types"] == sorted(method.unsupported_model_types)
    by_name = {item["name"]: item for item in listed}
    assert "llama" in by_name["bitfit"]["unsupported_model_types"]
    assert by_name["stack"]["config"] is None and by_name["stack"]["default_learning_rate"] is None  # needs members


def test_method_info_of_an_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="allowed: .*lora"):
        method_info("nope")


def test_schema_json_and_yaml() -> None:
    schema = config_schema()
    as_json = runner.invoke(app, ["config", "--schema"])
    as_yaml = runner.invoke(app, ["config", "--schema", "--format", "yaml"])
    assert as_json.exit_code == 0 and as_yaml.exit_code == 0, as_json.output + as_yaml.output
    assert json.loads(as_json.output) == schema
    assert yaml.safe_load(as_yaml.output) == schema
    assert not as_yaml.output.lstrip().startswith("{")  # block YAML, not JSON or a Python dict


def test_schema_includes_every_registered_method_and_task_config() -> None:
    schema = config_schema()
    defs = schema["$defs"]
    assert schema["$schema"].startswith("https://json-schema.org/") and schema["title"] == "RunConfig"

    def targets(name: str) -> set[str]:
        return {ref["$ref"].rsplit("/", 1)[-1] for ref in defs[name]["anyOf"]}

    methods = {method_registration(name).config_cls.__name__ for name in method_names()}
    assert targets("MethodConfig") == methods and "r" in defs["LoRAConfig"]["properties"]
    assert {"SeqClsConfig", "TokenClsConfig", "CausalLMConfig"} <= targets("TaskConfig")
    assert schema["properties"]["method"]["default"]["name"] == "bottleneck"
    assert schema["properties"]["task"]["default"]["name"] == "seq_cls"
    training = defs[schema["properties"]["training"]["$ref"].rsplit("/", 1)[-1]]["properties"]
    assert training["weight_decay"]["default"] == 0.01 and "description" in training["log_every"]


def test_config_shows_the_resolved_config() -> None:
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == RunConfig().model_dump(mode="json")
    result = runner.invoke(app, ["config", "intents", "--set", "training.epochs=2", "--format", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["training"]["epochs"] == 2 and shown["data"]["train"].endswith("train.jsonl")
    assert validate_config(shown).training.epochs == 2


def test_config_errors_are_messages() -> None:
    result = runner.invoke(app, ["config", "--schema", "intents"])
    assert result.exit_code == 2 and "takes no CONFIG" in result.output
    result = runner.invoke(app, ["config", "--set", "training.lerning_rate=1"])
    assert result.exit_code == 2 and "did you mean 'learning_rate'" in result.output
    assert "Traceback" not in result.output


def test_train_help_points_to_the_schema() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "adaptune config --schema" in result.output
