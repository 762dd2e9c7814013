"""Every number a command accepts is checked by a rule of idml.rules, through the one numeric-flag
validator (idml.rules.flag_type): a value out of range, huge, not finite or not a number is one line
naming the flag, exit 2; nothing reaches the library unchecked."""

from __future__ import annotations

import argparse
import importlib

import pytest

from expect import one_error_line
from idml.cli import COMMANDS
from runs import run_idml

#: the arguments a command needs besides the flag under test
REQUIRED = {"eval": ["--checkpoint", "x.pth.tar"], "predict": ["--checkpoint", "x.pth.tar", "a.png"],
            "plot": ["runs/x"], "train": [], "bench": [],
            "export": ["--checkpoint", "x.pth.tar", "--format", "onnx", "--output", "x.onnx"]}
HOSTILE = ["-1", "0", "1.5", "100000000000000000000", "-100000000000000000000", "nan", "inf", "1e999", "0x10",
           "9" * 5000, "ten"]


class Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def parser_of(command: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The argparse parser a command builds (caught as it starts parsing)."""
    def catch(self, *args, **kwargs):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    module = importlib.import_module(COMMANDS[command][0])
    parse = getattr(module, "parse_args", None) or getattr(module, "parse_bench_args", None)
    try:
        if command == "train":
            from idml.config import parse_train_args

            parse_train_args([])
        else:
            parse(REQUIRED[command])
    except Parsed as caught:
        return caught.parser
    raise AssertionError(f"{command} built no parser")


def numeric_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and (a.type in (int, float) or hasattr(a.type, "rule"))]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_numeric_flag_goes_through_the_validator(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = parser_of(command, monkeypatch)
    raw = [a.option_strings[-1] for a in parser._actions if a.type in (int, float)]
    assert raw == [], f"idml {command}: {raw} parse numbers without idml.rules.flag_type"
    ruled = [a for a in numeric_flags(parser) if a.type.rule is not None]
    if command not in ("train", "bench", "plot"):  # train and bench check their settings in TrainConfig
        assert ruled, f"idml {command} has numeric flags without rules"


@pytest.mark.parametrize("command", ["eval", "predict", "bench"])
def test_hostile_numbers_are_one_line_or_within_the_rule(command: str, monkeypatch: pytest.MonkeyPatch,
                                                        capsys) -> None:
    with monkeypatch.context() as patch:
        flags = [a for a in numeric_flags(parser_of(command, patch)) if a.type.rule is not None]
    for action in flags:
        for value in HOSTILE:
            try:
                parsed = action.type(value)
            except argparse.ArgumentTypeError as exc:
                message = str(exc)
                assert "\n" not in message and len(message) < 300 and message.startswith("must "), message
                continue
            assert action.type.rule.test(parsed), (command, action.option_strings, value)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["predict", "--checkpoint", "x", "a.png", "-b", str(10**20)], "argument -b/--batch_size: must be an integer"),
    (["eval", "--checkpoint", "x", "--blend_seed", "-1"], "--blend_seed: must be an integer in [0, 4294967295]"),
    (["eval", "--checkpoint", "x", "-j", "100000"], "argument -j/--workers: must be an integer in [0, 256]"),
    (["eval", "--checkpoint", "x", "--blends", "1e9"], "argument --blends: must be an integer"),
    (["predict", "--checkpoint", "x", "a.png", "--topk", "0"], "argument --topk: must be an integer in [1, "),
    (["bench", "--steps", "0"], "argument --steps: must be an integer in [1, 100000]"),
    (["bench", "--warmup", "-1"], "argument --warmup: must be an integer in [0, 100000]"),
    (["train", "--lr", "x" * 5000], "(5000 characters)"),
    (["train", "--mean", "0.5", "nope", "0.5"], "argument --mean: must be a number (got 'nope')"),
])
def test_the_reviews_numeric_flags_are_one_line_exit_2(argv: list[str], fragment: str, capsys) -> None:
    code, _, err = run_idml(argv, capsys)
    line = one_error_line(err, fragment, code=code)
    assert len(line) < 400
