"""The checks of a run that depend on this machine, not on the settings alone, made before anything
heavy is imported: an optional part a setting needs, a depth the network cannot have, ``--decode
gpu`` on a named device that is not CUDA, an official dataset missing under ``--data_dir``, a
backbone name the installed library does not know.

``idml train`` runs them right after parsing its flags, so that a newcomer's mistake costs a
fraction of a second instead of torch's import; :func:`idml.training.setup.run_train` runs them too.
Only a backbone of another library (``timm:<name>``) needs that library imported.
"""

from __future__ import annotations

from idml.config import TrainConfig
from idml.data.catalog import dataset_info, decode_problem, user_dataset
from idml.data.layouts import missing_data
from idml.errors import ConfigError, DataError
from idml.extras import require
from idml.models.spec import depth_problem


def preflight(cfg: TrainConfig, data: bool = True) -> None:
    """Refuse, with one line each, what this machine cannot run (see the module docstring);
    ``data=False`` for a run on synthetic data (idml bench). The errors are ConfigErrors (a missing
    dataset: the loader's DataError): under torchrun every rank has the same line, which rank 0 prints."""
    if cfg.tensorboard:
        require("tensorboard", "--tensorboard")
    if getattr(user_dataset(cfg.dataset), "kind", None) == "hf":
        require("hf", "--dataset hf:<path>")
    family = dataset_info(cfg.dataset, cfg.input_size).family
    named_device = None if cfg.device == "auto" else cfg.device  # auto: known once torch looks (training_decode)
    problem = depth_problem(cfg.net_type, family, cfg.depth, cfg.bottleneck) or \
        (named_device and data and decode_problem(cfg.decode, named_device))
    if problem:
        raise ConfigError(problem)
    problem = missing_data(cfg.dataset, cfg.data_dir) if data else None
    if problem:  # the error the loader would raise, earlier
        raise DataError(problem)
    if ":" in cfg.net_type:
        from idml.models.external import name_problem  # imports torch and the backbone's library

        problem = name_problem(cfg.net_type)
        if problem:
            raise ConfigError(problem)
