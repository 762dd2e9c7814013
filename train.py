"""Run the idml trainer from a checkout, exactly as the official README's ``python train.py``."""

import sys
from pathlib import Path

try:
    from idml.cli import main
except ImportError:  # not installed: use the source tree next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from idml.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
