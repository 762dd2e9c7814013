"""Run the idml trainer from a checkout, exactly as the official README's ``python train.py``.

Run by a Python without idml's dependencies (outside the environment the README's quick start
makes), it says so in one line instead of a traceback.
"""

import sys
from pathlib import Path

#: the import names of idml's base dependencies (pyproject.toml), and idml itself
DEPENDENCIES = {"idml", "torch", "torchvision", "numpy", "sklearn", "scipy", "yaml", "tqdm", "matplotlib", "PIL"}


def missing_dependency(exc: ModuleNotFoundError) -> str:
    return (f"python train.py: error: this Python ({sys.executable}) lacks idml's dependencies (no module named "
            f"{exc.name!r}): activate idml's environment (source .venv/bin/activate) or run .venv/bin/python "
            "train.py; the README's quick start makes it")


def main() -> int:
    try:
        try:
            from idml.cli import main as idml_main
        except ImportError:  # idml not installed: use the source tree next to this file
            sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
            from idml.cli import main as idml_main
        return idml_main(["train", *sys.argv[1:]])
    except ModuleNotFoundError as exc:
        if "--debug" in sys.argv or (exc.name or "").partition(".")[0] not in DEPENDENCIES:
            raise
        print(missing_dependency(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
