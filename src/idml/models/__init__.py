"""Networks: :mod:`~idml.models.spec` names them (no torch), :mod:`~idml.models.registry` builds
them with the IDML head; ResNet and PyramidNet are written here, other libraries' backbones come
through :mod:`~idml.models.external`."""
