"""The argument checks the rest of the package shares, so that a check reads as one line.

Every error names the function (``fn``), the argument, what was expected and what came::

    >>> positive_int(0, "num_heads", "MultiHeadAttention")
    Traceback (most recent call last):
    ...
    ValueError: MultiHeadAttention: num_heads must be a positive int, got 0

Python's ``True`` is an ``int`` (``True == 1``), so every integer check here refuses bools:
``num_heads=True`` is a mistake, not one head. Each check returns the value it accepted
(normalised: a pair for ``pair``, a tuple for ``names``), so it can sit in an assignment.
``error`` picks the exception where a caller's contract says ``TypeError``.

Private to the package: the names may change between versions.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Sequence, Tuple

import torch

__all__ = ["describe", "is_int", "is_number", "on_host", "integer", "positive_int", "number",
           "probability", "closed_probability", "boolean", "one_of", "pair", "names", "items",
           "tensor", "shape", "same", "broadcast", "attention_mask", "IMAGES"]


def describe(x) -> str:
    """A short account of a value for an error message: a tensor's dtype and shape, or the
    type and (at most 60 characters of) the repr of anything else."""
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r:.60}"


def is_int(value) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int_kind(minimum: Optional[int], maximum: Optional[int]) -> str:
    if minimum is not None and maximum is not None:
        return f"an int in {minimum}..{maximum}"
    if minimum == 1:
        return "a positive int"
    if minimum is not None:
        return f"an int >= {minimum}"
    if maximum is not None:
        return f"an int <= {maximum}"
    return "an int"


def integer(value, name: str, fn: str, minimum: Optional[int] = None,
            maximum: Optional[int] = None, error=ValueError) -> int:
    """``value`` if it is an int (not a bool) within ``minimum..maximum``, else ``error``."""
    if not is_int(value) or (minimum is not None and value < minimum) \
            or (maximum is not None and value > maximum):
        raise error(f"{fn}: {name} must be {_int_kind(minimum, maximum)}, got {value!r}")
    return value


def positive_int(value, name: str, fn: str, error=ValueError) -> int:
    return integer(value, name, fn, minimum=1, error=error)


def number(value, name: str, fn: str, low: Optional[float] = None, high: Optional[float] = None,
           *, low_open: bool = False, high_open: bool = False, error=ValueError) -> float:
    """``value`` as a float if it is a finite real number (not a bool) in the interval
    ``low..high`` (closed unless ``low_open``/``high_open``), else ``error``.

    NaN passes no comparison, so without the finiteness check a NaN learning rate or
    dropout would slip through every bound and train a model of NaNs without a word."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is None and high is None:
            kind = "a finite number"
        elif high is None:
            kind = f"a number {'>' if low_open else '>='} {low:g}"
        elif low is None:
            kind = f"a number {'<' if high_open else '<='} {high:g}"
        else:
            kind = (f"a number in {'(' if low_open else '['}{low:g}, {high:g}"
                    f"{')' if high_open else ']'}")
        raise error(f"{fn}: {name} must be {kind}, got {value!r}")
    return float(value)


def probability(value, name: str, fn: str, error=ValueError) -> float:
    """A dropout-style probability: a number in ``[0, 1)``."""
    return number(value, name, fn, 0, 1, high_open=True, error=error)


def boolean(value, name: str, fn: str, error=ValueError) -> bool:
    if not isinstance(value, bool):
        raise error(f"{fn}: {name} must be True or False, got {value!r}")
    return value


def one_of(value, name: str, fn: str, options: Sequence, error=ValueError):
    if value not in options:
        raise error(f"{fn}: {name} must be one of {tuple(options)}, got {value!r}")
    return value


def pair(value, name: str, fn: str, minimum: int = 0) -> Tuple[int, int]:
    """``3`` or ``(3, 2)`` as a pair of ints, each at least ``minimum``: the ``int or
    (int, int)`` arguments of ``F.conv2d`` and the pooling functions."""
    if is_int(value):
        value = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 \
            and all(is_int(v) for v in value):
        value = (value[0], value[1])
    else:
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value!r}")
    return value


def names(value, name: str, fn: str) -> Tuple[str, ...]:
    """A name or a list of names, as a tuple."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{fn}: {name} must be a name or a list of names, got {value!r}")
    return tuple(value)


def tensor(x, name: str, fn: str, ndim: Optional[Sequence[int]] = None, layout: str = "",
           floating: bool = False) -> torch.Tensor:
    """``x`` if it is a tensor (with one of the ranks ``ndim``, floating point if asked),
    else ``TypeError`` (not a tensor, wrong dtype) or ``ValueError`` (wrong rank).
    ``layout`` names the expected shape in the message, e.g. ``"(B, C, H, W)"``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() not in tuple(ndim):
        want = layout or " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{fn}: {name} must be {want}, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {x.dtype}")
    return x


def is_number(value) -> bool:
    """A finite real number that is not a ``bool``."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def on_host(x: torch.Tensor) -> bool:
    """True when ``x``'s values can be read without waiting for an accelerator (it is in CPU
    memory). A check that reads a tensor's values (``int(ids.max())``, ``bool(mask.any())``)
    on a GPU stalls the host until the device has caught up, every step, and breaks
    ``torch.compile``'s graph: on the per-step path such checks run ``if on_host(x)``, where
    they cost nothing, and the data pipeline, which builds the tensors on the CPU, vouches
    for them on an accelerator."""
    return x.device.type == "cpu"


# The layout the image functions (conv, pooling, patches) take, as ``tensor``'s ``layout``.
IMAGES = "4-D (batch, channels, height, width) or 3-D (channels, height, width)"


def closed_probability(value, name: str, fn: str, error=ValueError) -> float:
    """A probability that may be 1, as ``F.dropout`` takes it (``p=1`` zeroes everything):
    a number in ``[0, 1]``."""
    if not (is_number(value) and 0 <= value <= 1):
        raise error(f"{fn}: {name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def shape(x, name: str, fn: str, *dims) -> torch.Tensor:
    """``x`` if it is a tensor of shape ``dims``, where an int must match and a str names a
    size that may be anything: ``shape(x, "x", fn, "B", "L", 8)`` wants ``(B, L, 8)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor, got {type(x).__name__}")
    if x.dim() != len(dims) or any(is_int(d) and n != d for n, d in zip(x.shape, dims)):
        raise ValueError(f"{fn}: {name} must have shape ({', '.join(map(str, dims))}), "
                         f"got {tuple(x.shape)}")
    return x


def same(fn: str, what: str, error=ValueError, **values):
    """The common value of ``values`` if they agree, else ``error`` naming them:
    ``same(fn, "dtype", TypeError, q=q.dtype, k=k.dtype)``."""
    first, *rest = values.values()
    if any(v != first for v in rest):
        names, got = list(values), [str(v) for v in values.values()]
        raise error(f"{fn}: {', '.join(names[:-1])} and {names[-1]} must have the same {what}, "
                    f"got {', '.join(got[:-1])} and {got[-1]}")
    return first


def broadcast(fn: str, what: str, **shapes) -> torch.Size:
    """``torch.broadcast_shapes`` of ``shapes``, or ``ValueError`` naming them:
    ``broadcast(fn, "batch dimensions", q=q.shape[:-2], k=k.shape[:-2])``."""
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        listed = [f"{n} {tuple(s)}" for n, s in shapes.items()]
        raise ValueError(f"{fn}: the {what} of {', '.join(listed[:-1])} and {listed[-1]} do "
                         f"not broadcast") from None


def attention_mask(mask, name: str, fn: str, shape: Sequence[int],
                   dtype: torch.dtype) -> torch.Tensor:
    """``mask`` if it can mask attention scores of ``shape`` and ``dtype``: a bool tensor
    (``True`` = may attend) or a float one (float32 or ``dtype``, added to the scores) that
    broadcasts to ``shape``, as ``F.scaled_dot_product_attention`` takes it."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor or None, got {type(mask).__name__}")
    if mask.dtype not in (torch.bool, torch.float32, dtype):
        raise TypeError(f"{fn}: {name} must be bool (True = may attend) or a float mask of "
                        f"dtype float32 or {dtype} (added to the scores), got {mask.dtype}")
    try:
        ok = torch.broadcast_shapes(mask.shape, shape) == tuple(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{fn}: {name} of shape {tuple(mask.shape)} does not broadcast to the "
                         f"scores' shape {tuple(shape)} (..., L, S)")
    return mask


def items(value, name: str, fn: str, count: int, example: str = "") -> tuple:
    """A list or tuple of ``count`` items, as a tuple (a string is not a list of letters);
    check each item with another validator. ``example`` shows the expected form."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) \
            or len(value) != count:
        like = f" like {example}" if example else ""
        raise ValueError(f"{fn}: {name} must be a list of {count}{like}, got {value!r}")
    return tuple(value)
