"""idml: Introspective Deep Metric Learning (Wang et al., TPAMI 2023) for image classification.

The Python API below is loaded on first use, so that ``idml --help`` and a refused flag do not
wait for torch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: name -> the module that defines it
_API = {
    "HeadOutput": "idml.ism",
    "ISMHead": "idml.ism",
    "IntrospectiveClassifier": "idml.ism",
    "introspective_logits": "idml.ism",
    "uncertainty_score": "idml.ism",
    "ModelSpec": "idml.models.spec",
    "build_model": "idml.models.registry",
}

__all__ = [*sorted(_API), "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'idml' has no attribute {name!r}")
    return getattr(import_module(_API[name]), name)
