"""Datasets: :mod:`~idml.data.catalog` knows them (no torch), :mod:`~idml.data.build` loads them
into a :class:`~idml.data.types.DataBundle`; one module per kind of data below that."""
