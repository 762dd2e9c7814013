"""Checkpoints: :mod:`~idml.checkpoint.schema` is what one holds (the one list of its fields and
their rules), :mod:`~idml.checkpoint.io` writes and reads the files safely."""
