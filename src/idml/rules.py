"""What a value must be: the one set of rules behind the settings and the checkpoints.

A :class:`Rule` says in words what a value must be, and tests it. The settings of a run
(:class:`idml.config.TrainConfig`) declare one per setting; a checkpoint
(:mod:`idml.checkpoint.schema`) records those settings and the model they build, and checks them
with the very same rules. So a run can never write a checkpoint that it then refuses to read back
(a setting accepted at the start and refused in the checkpoint, or the other way round).

No torch here: the command line is checked before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from idml.errors import describe


@dataclass(frozen=True)
class Rule:
    """A value's rule. ``words`` complete the sentence "<name> must ...", ``test`` decides, and
    ``reason`` (optional) explains a refused value better than the words can (an unknown name
    and the names that are known, say). ``edges`` are the values at each of its bounds and just
    beyond them: tests walk every setting through train, checkpoint, eval and resume at these."""

    words: str
    test: Callable[[Any], bool]
    reason: Callable[[Any], str | None] | None = None
    edges: tuple = ()

    def problem(self, name: str, value: Any, specific: bool = True) -> str | None:
        """None when ``value`` passes; else one line naming ``name``, the rule and the value (a bounded
        description of it: a value from a file can be huge). ``specific``: the rule's own reason
        where it has one (the known names, for an unknown one)."""
        try:
            if self.test(value):
                return None
        except (TypeError, ValueError, OverflowError, RecursionError):  # a value of an unexpected shape
            pass
        reason = self.reason(value) if specific and self.reason is not None and isinstance(value, str) else None
        return reason or f"{name} must {self.words} (got {describe(value)})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _bounds_words(low: float | None, high: float | None, above: float | None, below: float | None) -> str:
    """" in [0, 1)", " >= 0", " > 0" ...: the bounds part of a rule's words."""
    lower = f"[{_num(low)}" if low is not None else f"({_num(above)}" if above is not None else None
    upper = f"{_num(high)}]" if high is not None else f"{_num(below)})" if below is not None else None
    if lower and upper:
        return f" in {lower}, {upper}"
    if lower:
        return f" >= {_num(low)}" if low is not None else f" > {_num(above)}"
    if upper:
        return f" <= {_num(high)}" if high is not None else f" < {_num(below)}"
    return ""


def _within(value: float, low: float | None, high: float | None, above: float | None, below: float | None) -> bool:
    return ((low is None or value >= low) and (high is None or value <= high)
            and (above is None or value > above) and (below is None or value < below))


def integer(low: int | None = None, high: int | None = None) -> Rule:
    """A whole number (not a boolean) within the bounds."""
    edges = (low, low - 1) if low is not None else (-10**30,)
    edges += (high, high + 1) if high is not None else (10**30,)
    return Rule(f"be an integer{_bounds_words(low, high, None, None)}",
                lambda v: _is_int(v) and _within(v, low, high, None, None), edges=edges)


def _number_edges(low: float | None, high: float | None, above: float | None, below: float | None) -> tuple:
    """The bounds of a number rule and the floats just beyond them (the largest float where unbounded)."""
    edges: tuple = (0.0,)
    for bound, beyond, inclusive in ((low, -math.inf, True), (above, -math.inf, False),
                                     (high, math.inf, True), (below, math.inf, False)):
        if bound is not None:
            inside = bound if inclusive else math.nextafter(bound, -beyond)
            edges += (float(inside), math.nextafter(float(inside), beyond))
    if low is None and above is None:
        edges += (-sys.float_info.max,)
    if high is None and below is None:
        edges += (sys.float_info.max,)
    return (*edges, math.nan, math.inf)


def number(low: float | None = None, high: float | None = None, *, above: float | None = None,
           below: float | None = None) -> Rule:
    """A finite number (integers count; booleans, NaN and infinities do not) within the bounds."""
    only_positive = above == 0 and low is None and high is None and below is None
    words = "be a positive number" if only_positive else f"be a number{_bounds_words(low, high, above, below)}"
    return Rule(words, lambda v: _is_real(v) and _within(v, low, high, above, below),
                edges=_number_edges(low, high, above, below))


def boolean() -> Rule:
    return Rule("be true or false", lambda v: isinstance(v, bool), edges=(True, False, 0, 1))


def text(longest: int = 4096, *, pattern: str | None = None, words: str | None = None,
         reason: Callable[[str], str | None] | None = None) -> Rule:
    """Non-empty text of at most ``longest`` characters, matching ``pattern`` and passing ``reason``
    (a function naming what is wrong with the text, or None) when given."""
    compiled = re.compile(pattern) if pattern else None

    def test(value: Any) -> bool:
        return (isinstance(value, str) and 0 < len(value) <= longest and value.strip() != ""
                and (compiled is None or bool(compiled.fullmatch(value))) and (reason is None or reason(value) is None))

    return Rule(words or f"be text of 1 to {longest} characters (not only spaces)", test, reason,
                edges=("x", "x" * longest, "x" * (longest + 1), "", " "))



def one_of(*choices: str) -> Rule:
    return Rule(f"be one of {', '.join(choices)}", lambda v: v in choices, edges=(*choices, "other"))


def off_or(rule: Rule) -> Rule:
    """0 (the feature is off), or a number passing ``rule``: for parameters whose tiny values are not
    a smaller effect but a broken one (Beta(1e-320, 1e-320) draws NaN)."""
    return Rule(f"be 0 (off) or {rule.words.removeprefix('be ')}", lambda v: (_is_real(v) and v == 0) or rule.test(v),
                edges=(0, 0.0, *rule.edges, math.nextafter(0.0, 1.0)))


def optional(rule: Rule) -> Rule:
    """``rule``, or None (a setting's "not given")."""
    return Rule(rule.words, lambda v: v is None or rule.test(v), rule.reason, edges=(None, *rule.edges))


def numbers(*counts: int, each: Rule | None = None) -> Rule:
    """A list of ``counts`` (one of them) numbers, each passing ``each`` (default: any finite number)."""
    one = each or number()
    how_many = " or ".join(map(str, counts))
    words = f"be {how_many} numbers" + (f" that each {one.words}" if each is not None else " (finite)")
    return Rule(words, lambda v: isinstance(v, list | tuple) and len(v) in counts and all(one.test(x) for x in v),
                edges=(*tuple([edge] * counts[-1] for edge in one.edges), [0.5] * (counts[-1] + 1)))


def flag_type(parse: Callable[[str], Any], rule: Rule | None = None) -> Callable[[str], Any]:
    """An argparse ``type=`` for a numeric flag: the text parsed with ``parse`` (``int`` or ``float``)
    and, with ``rule``, checked by it; the one numeric-flag validator of every command.

    argparse reports a refusal on one line, naming the flag: ``argument -b/--batch_size: must be an
    integer in [1, 65536] (got 100000000000000000000)``; the text or value is quoted with
    :func:`idml.errors.describe` (argparse itself would quote a text of any length). ``idml train``
    parses with it and checks its settings' rules in :class:`idml.config.TrainConfig` (whose
    values may also come from a YAML file); the other commands' own flags pass their rule here.
    """
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except (ValueError, OverflowError):  # int() refuses more than 4300 digits with a ValueError too
            words = rule.words if rule is not None else f"be {'an integer' if parse is int else 'a number'}"
            raise argparse.ArgumentTypeError(f"must {words} (got {describe(text)})") from None
        if rule is not None and not rule.test(value):
            raise argparse.ArgumentTypeError(f"must {rule.words} (got {describe(value)})")
        return value

    convert.__name__ = getattr(parse, "__name__", "number")  # what argparse calls the type in its messages
    convert.rule = rule  # type: ignore[attr-defined] - what a test walking every flag checks
    return convert
