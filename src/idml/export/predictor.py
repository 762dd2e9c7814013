"""An exported file as ``idml predict`` uses it (``--model``): the same preparation, outputs and table
as for the checkpoint it came from.

An ``.onnx`` file runs in onnxruntime; idml takes its ``logits`` and computes the probabilities and
the score from them with the same code as for a checkpoint (so ``--score`` may name any score the
logits decide). A ``.safetensors`` file is rebuilt into the PyTorch network and runs as a
checkpoint does. TorchScript files are not read: loading one runs the code it holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from idml.data.image_files import PREPARERS
from idml.device.runtime import resolve_device
from idml.errors import ConfigError
from idml.export.formats import FORMATS, ONNX_RUNTIME_PACKAGES, require
from idml.inference import Outputs, Predictor, checkpoint_predictor
from idml.scores import LOGIT_SCORE_NAMES

#: The file suffixes ``--model`` reads (TorchScript's is not one of them).
READABLE = (".onnx", ".safetensors")


def _onnx_predictor(path: Path, device: str, amp: str | None, ema: bool) -> Predictor:
    if ema or amp is not None or device not in ("auto", "cpu"):
        raise ConfigError("--ema, --amp and --device apply to checkpoints and .safetensors models; an .onnx model "
                          "runs as exported, in float32 on onnxruntime's CPU provider (export with --ema for the "
                          "averaged weights)")
    require(ONNX_RUNTIME_PACKAGES, FORMATS["onnx"].extra, "idml predict --model FILE.onnx")
    from idml.export.onnx import load_onnx

    model = load_onnx(path)

    def outputs(images: torch.Tensor) -> Outputs:
        return Outputs(model.run(images.numpy())["logits"].astype(np.float64), None)

    meta = model.metadata
    return Predictor(str(path), meta.class_names, meta.temperature, outputs,
                     PREPARERS[meta.preparation](meta.input_size), LOGIT_SCORE_NAMES,
                     "needs the checkpoint (an exported model returns its logits only)")


def exported_predictor(path: str | Path, device: str = "auto", amp: str | None = None,
                       ema: bool = False) -> Predictor:
    """The model of a file ``idml export`` wrote, ready for ``idml predict``; any problem is one line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _onnx_predictor(path, device, amp, ema)
    if suffix == ".safetensors":
        if ema:
            raise ConfigError("--ema applies to checkpoints; export with --ema for the averaged weights")
        fmt = FORMATS["safetensors"]
        require(fmt.packages, fmt.extra, "idml predict --model FILE.safetensors")
        from idml.export.safetensors import load_safetensors_model

        trained, _ = load_safetensors_model(path, resolve_device(device), amp)
        return checkpoint_predictor(trained, str(path))
    raise ConfigError(f"--model {path}: give a file written by idml export, ending in {' or '.join(READABLE)} "
                      "(TorchScript files run code when loaded: use torch.jit.load on files you trust)")
