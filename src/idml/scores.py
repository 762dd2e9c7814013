"""The uncertainty scores idml knows: their names, what each is, which need the ISM head, and the
one ``idml predict`` prints by default. A table without imports, so that commands can offer the
names before anything heavy loads; :func:`idml.metrics.uncertainty_scores` computes them.
"""

#: Every score ``idml eval`` measures, in report order, with what it is. ``ism`` scores need a model
#: trained with the ISM head. All are oriented so that a larger value means "less sure".
SCORES: dict[str, tuple[str, bool]] = {
    "msp": ("1 - max softmax probability", False),
    "entropy": ("entropy of the softmax, nats", False),
    "max_logit": ("- max logit", False),
    "energy": ("- logsumexp of the logits (free energy)", False),
    "neg_f_norm": ("- ||f||, the pooled feature norm (a probe of the mechanism, not a proposal)", False),
    "u_norm2": ("||u||^2, the squared norm of the uncertainty embedding", True),
    "u_over_f": ("||u||^2 / ||f||^2, the uncertainty norm relative to the feature norm", True),
    "ism_exponent": ("||u||^2 / (lambda ||f - p_y||^2) at the predicted class y: the ISM exponent", True),
    "ism_msp": ("1 - max softmax of the introspective logits", True),
}
SCORE_NAMES = list(SCORES)
#: The uncertainty column of ``idml predict`` by default: the score that measured best in
#: experiments/RESULTS.md (docs/uncertainty.md).
DEFAULT_SCORE = "msp"
#: The scores the plain logits alone decide (no features, no ISM head): those an exported model can
#: return (``idml export --score``), computed by :data:`idml.metrics.LOGIT_SCORES`.
LOGIT_SCORE_NAMES = ("msp", "entropy", "max_logit", "energy")
