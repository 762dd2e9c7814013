"""Where and how the work runs, for training, evaluation, prediction and benchmarks alike:
:mod:`~idml.device.runtime` (device, mixed precision, memory format, rank) and
:mod:`~idml.device.memory` (peak memory of a step)."""
