"""idml: Introspective Deep Metric Learning (Wang et al., TPAMI 2023) for image classification."""

from idml.ism import HeadOutput, IntrospectiveClassifier, ISMHead, introspective_logits, uncertainty_score
from idml.models import ModelSpec, build_model

__version__ = "0.1.0"

__all__ = [
    "HeadOutput",
    "ISMHead",
    "IntrospectiveClassifier",
    "ModelSpec",
    "__version__",
    "build_model",
    "introspective_logits",
    "uncertainty_score",
]
