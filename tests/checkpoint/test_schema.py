"""The one checkpoint schema: every field in one list, and one set of rules with the settings.

What a run accepts at the start its checkpoints accept when read back, and the other way round;
a field added to the schema is written, read and checked with no other edit.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import fields, make_dataclass
from pathlib import Path

import pytest
import torch
import yaml

from idml.checkpoint.io import load_checkpoint, save_checkpoint
from idml.checkpoint.schema import Checkpoint, check_config, check_model, entry, model_rule
from idml.cli import main as cli_main
from idml.config import TrainConfig, load_yaml_config, setting_problem, setting_rule
from idml.errors import ConfigError, IdmlError
from idml.models.spec import ModelSpec
from idml.rules import optional, text

#: Values of every kind and size a YAML file, a command line or a tampered checkpoint can hold.
PROBES = [None, True, False, 0, 1, -1, 2, 8, 32, 64, 0.5, 1.0, 1e-9, 2**16 + 1, 2**40, 1e308, float("nan"),
          float("inf"), "", "x", "auto", "resnet", "pyramidnet", "timm:resnet18", "cifar10", "folder", "0-4",
          "a" * 5000, [0.5, 0.5, 0.5], [0.5, 0.5], [0.0, 0.0, 0.0], [1, "a", 2], {"a": 1}]
SETTINGS = [f.name for f in fields(TrainConfig)]
MODEL_SETTINGS = [f.name for f in fields(ModelSpec) if f.name in SETTINGS]


def accepted(check, value) -> bool:
    try:
        check(value)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("name", SETTINGS)
def test_every_setting_is_checked_by_one_rule_at_the_start_and_in_a_checkpoint(name: str) -> None:
    for value in PROBES:
        start = setting_problem(name, value) is None
        recorded = accepted(lambda v, name=name: check_config({name: v}), value)
        assert start == recorded, (name, value)
        if not start:  # and a TrainConfig refuses it with that very line
            with pytest.raises(ConfigError) as info:
                TrainConfig(**{name: value})
            line = setting_problem(name, value)  # (the value may be shown as a float: 1 -> 1.0)
            assert str(info.value).partition(" (got")[0] == line.partition(" (got")[0]


@pytest.mark.parametrize("name", MODEL_SETTINGS)
def test_the_network_settings_of_a_checkpoint_are_the_run_settings_rules(name: str) -> None:
    assert model_rule(name) is setting_rule(name)
    base = {"net_type": "resnet", "dataset": "cifar10", "depth": 8}
    for value in PROBES:
        assert setting_problem(name, value) is None or not accepted(check_model, base | {name: value}), (name, value)


def test_a_field_added_to_the_schema_is_written_read_and_checked(tmp_path: Path) -> None:
    """One declaration, no other edit: ``to_state`` writes it, ``from_state`` reads and checks it."""
    extended = make_dataclass("Extended", [("notes", str | None, entry(None, optional(text(20))))],
                              bases=(Checkpoint,))
    model = {"net_type": "resnet", "dataset": "cifar10", "depth": 1}
    weights = {"w": torch.zeros(1)}
    path = save_checkpoint(extended(model=model, state_dict=weights, notes="kept"), tmp_path / "c.pth.tar")

    raw = torch.load(path, weights_only=True)
    assert raw["notes"] == "kept"
    assert extended.from_state(raw, path).notes == "kept"
    with pytest.raises(IdmlError, match=r"field notes must be text of 1 to 20 characters .* \(got .x{25}.\)"):
        extended.from_state(raw | {"notes": "x" * 25}, path)
    assert load_checkpoint(path).model == model  # today's schema ignores a field it does not know


def run(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return cli_main(argv)


@pytest.mark.slow
def test_a_run_at_the_edge_of_the_rules_reads_back_its_own_checkpoints(tmp_path: Path) -> None:
    """--alpha 0 trained, and every checkpoint it wrote was refused by eval, predict and --resume."""
    common = ["--dataset", "digits", "--net_type", "pyramidnet", "--alpha", "0", "--depth", "8", "--no-bottleneck",
              "--batch_size", "128", "--device", "cpu", "--amp", "off", "--no-verbose", "--output_dir",
              str(tmp_path), "--expname", "edge"]
    assert run(["train", *common, "--epochs", "1"]) == 0
    assert run(["eval", "--checkpoint", str(tmp_path / "edge" / "checkpoint.pth.tar"), "--device", "cpu"]) == 0
    assert run(["train", *common, "--epochs", "2", "--resume", "auto"]) == 0
    assert load_checkpoint(tmp_path / "edge" / "checkpoint.pth.tar").epoch == 2


#: settings that make the others applicable: an in-memory dataset (--classes, --label_noise) and a
#: user dataset (--input_size, --mean, --std)
BASES = [{"dataset": name, "net_type": "resnet", "depth": 8} for name in ("digits", "folder")]


def built(name: str, value) -> TrainConfig | None:
    """The first base with ``name = value`` that is a valid TrainConfig, else None (one ConfigError each)."""
    for base in BASES:
        try:
            return TrainConfig(**(base | {name: value}))
        except ConfigError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)[:600]
    return None


@pytest.mark.parametrize("name", SETTINGS)
def test_every_setting_at_the_edges_of_its_rule_round_trips(name: str, tmp_path: Path) -> None:
    """Each setting at its bounds and just beyond (Rule.edges): refused with one line at the start,
    or accepted and then written to config.yaml and to a checkpoint and read back unchanged, and
    accepted by the checkpoint's checks (what eval, predict and --resume read)."""
    edges = setting_rule(name).edges
    assert edges, f"{name}'s rule names no edges to test"
    for value in edges:
        cfg = built(name, value)
        if setting_problem(name, value) is not None:
            assert cfg is None, (name, value)
            continue
        if cfg is None:
            continue  # valid alone, refused with one line by a check across settings
        config_yaml = tmp_path / "config.yaml"
        config_yaml.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        assert TrainConfig(**load_yaml_config(str(config_yaml))) == cfg, (name, value)
        check_config(cfg.to_dict())
        check_model(cfg.model_spec.to_dict() | {"num_classes": 10})
        saved = io.BytesIO()
        torch.save({"config": cfg.to_dict(), "model": cfg.model_spec.to_dict()}, saved)
        saved.seek(0)
        back = torch.load(saved, weights_only=True)
        assert TrainConfig(**back["config"]) == cfg and back["model"] == cfg.model_spec.to_dict(), (name, value)
