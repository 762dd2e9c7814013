"""The ``idml`` command. Each subcommand lives in its own module with ``main(argv) -> int``.

``python train.py ...`` at the repository root is ``idml train ...``.
"""

from __future__ import annotations

import importlib
import sys

from idml.config import OneLineParser
from idml.errors import IdmlError

#: subcommand -> (module implementing ``main(argv)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("idml.train", "train a classifier (the official README's train.py)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = OneLineParser(prog="idml", description="Introspective Deep Metric Learning for image classification.")
    parser.add_argument("command", choices=list(COMMANDS),
                        help="; ".join(f"{name}: {text}" for name, (_, text) in COMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    parser.parse_args(argv[:1])
    command = argv[0]
    try:
        return importlib.import_module(COMMANDS[command][0]).main(argv[1:])
    except IdmlError as exc:
        print(f"idml {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"idml {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
