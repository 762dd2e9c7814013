"""``idml train``: parse the settings, then train (:func:`idml.training.setup.run_train`)."""

from __future__ import annotations

from idml.config import parse_train_args


def main(argv: list[str]) -> int:
    cfg = parse_train_args(argv)  # a bad flag is refused here, before torch is imported
    from idml.training.setup import run_train

    run_train(cfg)
    return 0
