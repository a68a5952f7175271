"""Small helpers shared by the package tests (imported as ``from helpers import ...``;
pytest puts ``tests/`` on ``sys.path`` because the folder has no ``__init__.py``)."""
from __future__ import annotations

import torch


def fmt(value) -> str:
    """Compact, -k friendly text for an argument: (2, 3) -> '2x3', 'same' -> 'same'."""
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def as_pair(value):
    """(a, b) stays (a, b); a single value v becomes (v, v)."""
    return tuple(value) if isinstance(value, tuple) else (value, value)


def leaf(t):
    """A fresh copy of ``t`` that collects its own gradient (``None`` stays ``None``)."""
    return None if t is None else t.detach().clone().requires_grad_(True)


def assert_close(actual, expected, what: str, atol: float, equal_nan: bool = False,
                 rtol: float = 0.0) -> None:
    """Same shape, same dtype, and ``|actual - expected| <= atol + rtol * |expected|``
    everywhere (no relative slack unless a test asks for it), or say which.

    The one tensor comparison of the package tests: each call states its tolerance, so a
    reader sees how close "close" is and why (round-off of the dtype and size at hand).
    """
    assert actual is not None, f"{what} is None (no gradient reached it)"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    try:  # torch.isclose is the test torch.testing.assert_close makes, at 1/50 of its cost
        with torch.no_grad():
            if bool(torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan).all()):
                return
    except (RuntimeError, TypeError, NotImplementedError):  # a dtype or device isclose lacks
        pass
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan,
                               msg=lambda m: f"{what}: {m}")  # fails, saying where and by how much
