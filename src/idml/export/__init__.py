"""Exported models: ``idml export`` writes them (:mod:`idml.export.exporter`), ``idml predict --model``
reads them (:mod:`idml.export.predictor`). One module per format (:mod:`~idml.export.onnx`,
:mod:`~idml.export.torchscript`, :mod:`~idml.export.safetensors`), the network they share
(:mod:`idml.export.graph`), the metadata they carry (:mod:`idml.export.metadata`) and the table of
formats (:mod:`idml.export.formats`, torch-free, for the command line).

Nothing is imported here: the format modules import their packages (onnx, onnxruntime,
safetensors) at the top, and are imported only once those are known to be installed.
"""
