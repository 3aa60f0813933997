"""Hyper-parameter checks shared by every model: one-line errors naming the model and the field.

Models call these from ``__post_init__`` so that a bad value fails at construction (config
validation, ``--dry-run``, a search trial) rather than an hour into training.

Example::

    check_int(self, "epochs", minimum=1)
    check_real(self, "dropout", low=0.0, high=1.0, high_open=True)
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Sequence
from typing import Any

from recvae.errors import RecvaeError

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


def is_int(value: object) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A finite real number that is not a bool."""
    return (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    )


def _name(model: Any) -> str:
    return model if isinstance(model, str) else getattr(model, "name", type(model).__name__)


def check_int(
    model: Any, field: str, value: object = None, *, minimum: int | None = None,
    maximum: int | None = None, optional: bool = False,
) -> None:
    """Raise unless ``value`` (default: ``model.<field>``) is an integer within the bounds."""
    if value is None:
        value = getattr(model, field, None)
    if value is None and optional:
        return
    ok = is_int(value) and (minimum is None or value >= minimum) and (
        maximum is None or value <= maximum
    )
    if not ok:
        if minimum == 1 and maximum is None:
            expected = "a positive integer"
        elif maximum is None:
            expected = f"an integer ≥ {minimum}" if minimum is not None else "an integer"
        else:
            expected = f"an integer in [{minimum}, {maximum}]"
        raise RecvaeError(f"{_name(model)}: {field} must be {expected}, got {value!r}")


def check_real(
    model: Any, field: str, value: object = None, *, low: float | None = None,
    high: float | None = None, low_open: bool = False, high_open: bool = False,
    optional: bool = False,
) -> None:
    """Raise unless ``value`` (default: ``model.<field>``) is a finite number within the bounds.

    ``low_open``/``high_open`` exclude the bound itself (``low=0, low_open=True``: positive).
    """
    if value is None:
        value = getattr(model, field, None)
    if value is None and optional:
        return
    ok = is_real(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise RecvaeError(
            f"{_name(model)}: {field} must be {_describe(low, high, low_open, high_open)}, "
            f"got {value!r}"
        )


def check_choice(model: Any, field: str, choices: Iterable[str], value: object = None) -> None:
    """Raise unless ``value`` (default: ``model.<field>``) is one of ``choices``."""
    if value is None:
        value = getattr(model, field, None)
    choices = list(choices)
    if value not in choices:
        raise RecvaeError(
            f"{_name(model)}: unknown {field} {value!r}: expected one of {', '.join(choices)}"
        )


def check_dims(model: Any, field: str, *, allow_empty: bool = True) -> tuple[int, ...]:
    """``model.<field>`` as a tuple of positive integers (layer sizes), or a one-line error."""
    value = getattr(model, field)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | tuple | list):
        raise RecvaeError(
            f"{_name(model)}: {field} must be a list of positive integers, got {value!r}"
        )
    for d in value:
        check_int(model, field, d, minimum=1)
    if not value and not allow_empty:
        raise RecvaeError(f"{_name(model)}: {field} needs at least one layer")
    return tuple(int(d) for d in value)


def check_weights(model: Any, field: str, length: int) -> tuple[float, ...]:
    """``model.<field>`` as ``length`` mixture weights (numbers ≥ 0 summing to 1), or a one-line
    error."""
    value = getattr(model, field)
    ok = (
        isinstance(value, Sequence) and not isinstance(value, str | bytes)
        and len(value) == length and all(is_real(w) and w >= 0 for w in value)
        and math.isclose(sum(value), 1.0, rel_tol=0.0, abs_tol=1e-6)
    )
    if not ok:
        raise RecvaeError(
            f"{_name(model)}: {field} must be {length} numbers ≥ 0 that sum to 1, got {value!r}"
        )
    return tuple(float(w) for w in value)


def check_device(model: Any, field: str = "device") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    value = getattr(model, field)
    if not isinstance(value, str) or not re.fullmatch(DEVICE_PATTERN, value):
        raise RecvaeError(
            f"{_name(model)}: unknown {field} {value!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        )


def _describe(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return "a finite number"
    if high is None:
        if low == 0:
            return "a finite number > 0" if low_open else "a finite number ≥ 0"
        return f"a number {'>' if low_open else '≥'} {low}"
    if low is None:
        return f"a number {'<' if high_open else '≤'} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
