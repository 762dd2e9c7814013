"""The ``idml`` command: ``idml train ...`` (``python train.py ...`` is the same trainer)."""

from __future__ import annotations

import sys

from idml.config import OneLineParser, parse_train_args
from idml.errors import IdmlError

COMMANDS = {"train": "train a classifier (the seed README's train.py)"}


def _train(argv: list[str]) -> int:
    from idml.train import run_train

    run_train(parse_train_args(argv))
    return 0


HANDLERS = {"train": _train}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = OneLineParser(prog="idml", description="Introspective Deep Metric Learning for image classification.")
    parser.add_argument("command", choices=list(COMMANDS), help="; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    parser.parse_args(argv[:1])
    try:
        return HANDLERS[argv[0]](argv[1:])
    except IdmlError as exc:
        print(f"idml {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"idml {argv[0]}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
