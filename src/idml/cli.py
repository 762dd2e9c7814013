"""The ``idml`` command. Each subcommand lives in its own module with ``main(argv) -> int``.

``python train.py ...`` at the repository root is ``idml train ...``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys

from idml import __version__
from idml.config import OneLineParser
from idml.errors import AgreedError, ConfigError, IdmlError, RunStopped, exit_without_interruption, one_line, printable

#: subcommand -> (module implementing ``main(argv)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("idml.commands.train", "train a classifier (the official README's train.py)"),
    "eval": ("idml.commands.eval", "error, NLL, calibration and uncertainty AUROC of a checkpoint"),
    "predict": ("idml.commands.predict", "top-k classes and uncertainty score of image files"),
    "export": ("idml.commands.export", "a checkpoint as an ONNX, TorchScript or safetensors file for deployment"),
    "plot": ("idml.commands.plot", "loss and error curves of runs from their metrics.csv"),
    "bench": ("idml.commands.bench", "training throughput of idml's settings vs the official code's, synthetic data"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    parser = OneLineParser(prog="idml", description="Introspective Deep Metric Learning for image classification. "
                           "--debug (anywhere on the command line) shows Python tracebacks instead of one-line errors; "
                           "--version prints the version.")

    parser.add_argument("command", choices=list(COMMANDS),
                        help="; ".join(f"{name}: {text}" for name, (_, text) in COMMANDS.items()))
    if argv[:1] == ["--version"]:
        print(f"idml {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    parser.parse_args(argv[:1])
    command = argv[0]
    try:
        code = importlib.import_module(COMMANDS[command][0]).main(argv[1:])
        sys.stdout.flush()  # a reader that left (``| head``) is noticed here, not at exit
        return code
    except BrokenPipeError:
        return stdout_closed()
    except IdmlError as exc:
        exit_without_interruption()
        if debug:
            raise
        report(f"idml {command}: error: {one_line(exc)}", shared=isinstance(exc, AgreedError | ConfigError))
        return 2
    except RunStopped as exc:
        report(f"idml {command}: {exc}", shared=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"idml {command}: interrupted", file=sys.stderr)
        return 130


def stdout_closed() -> int:
    """The reader of stdout went away (``idml eval | head``): stop quietly, as ``head``'s other
    writers do (killed by SIGPIPE: status 141), without Python's "Exception ignored" at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (captured in tests)
        pass
    return 128 + signal.SIGPIPE


def report(line: str, shared: bool) -> None:
    """Print ``line`` on stderr. Under torchrun a message every rank has is printed by rank 0 only;
    a rank's own message is prefixed with its rank."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and shared and rank != 0:
        return
    line = printable(line)
    with contextlib.suppress(BrokenPipeError):  # nobody reads stderr either: the status says it all
        print(f"[rank {rank}] {line}" if world > 1 and not shared else line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
