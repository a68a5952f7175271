"""Pooling from scratch: max, average and adaptive average pooling.

Chapter 02 derives these from slow loops. The functions mirror ``torch.nn.functional``:

* :func:`max_pool2d` equals ``F.max_pool2d`` (padding with -inf, dilation,
  ``ceil_mode``, ``return_indices``), gradients included: the gradient goes to the
  element that won each window, and ties are broken as PyTorch breaks them;
* :func:`avg_pool2d` equals ``F.avg_pool2d`` (``count_include_pad``,
  ``divisor_override``);
* :func:`adaptive_avg_pool2d` equals ``F.adaptive_avg_pool2d`` (``None`` keeps a size);
* :class:`MaxPool2d`, :class:`AvgPool2d`, :class:`AdaptiveAvgPool2d` have ``nn``'s
  constructors, attributes and printed form.

The windows are strided views of the (padded) input, cut with ``Tensor.unfold`` as
``mmgpt.conv.im2col`` cuts them, so no Python loop touches the pixels. Pooling has no
parameters: autograd derives every gradient from the view, the reduction and the
division.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import IMAGES, integer, is_int, on_host, pair, tensor

__all__ = [
    "pool_output_size",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_pool_matrix",
    "adaptive_avg_pool2d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
]

IntPair = Union[int, Tuple[int, int]]
Pair = Tuple[int, int]


def pool_output_size(size: int, kernel_size: int, stride: Optional[int] = None,
                     padding: int = 0, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Output length along one axis, as PyTorch's pooling layers compute it.

    ``floor((size + 2*padding - dilation*(kernel_size-1) - 1) / stride) + 1``, the
    formula of ``conv_output_size``. With ``ceil_mode=True`` the division rounds *up*,
    keeping a last, partial window, except that a window must start inside the input or
    its left padding (one that would start in the right padding is dropped).
    ``stride=None`` means ``kernel_size``. A result below 1 is returned as is.
    """
    stride = kernel_size if stride is None else stride
    for name, value, minimum in (("size", size, 0), ("kernel_size", kernel_size, 1),
                                 ("stride", stride, 1), ("padding", padding, 0),
                                 ("dilation", dilation, 1)):  # not an int: TypeError
        integer(value, name, "pool_output_size", minimum,
                error=ValueError if is_int(value) else TypeError)
    # the room left for the windows' starts once the first window is placed
    room = size + 2 * padding - dilation * (kernel_size - 1) - 1
    if not ceil_mode:
        return room // stride + 1
    out = -(-room // stride) + 1  # rounded up
    if (out - 1) * stride >= size + padding:  # it would start in the right padding
        out -= 1
    return out


def _check_input(x, fn: str) -> None:
    """``x`` must be images of real numbers, ``(B, C, H, W)`` or ``(C, H, W)``, with C, H, W > 0."""
    tensor(x, "x", fn, (3, 4), IMAGES)
    if 0 in x.shape[-3:]:
        raise ValueError(f"{fn}: x must have non-zero channels, height and width (only "
                         f"the batch may be empty), got shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{fn}: x must hold real numbers, got dtype {x.dtype}")


def _pool_args(fn: str, kernel_size, stride, padding, dilation=1, divisor_override=None):
    """Check and expand the window arguments; ``stride=None`` means ``kernel_size``."""
    kernel = pair(kernel_size, "kernel_size", fn, 1)
    stride = kernel if stride is None else pair(stride, "stride", fn, 1)
    padding, dilation = pair(padding, "padding", fn), pair(dilation, "dilation", fn, 1)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{fn}: padding must be at most half of kernel_size "
                         f"(padding <= kernel_size // 2), got padding={padding} for "
                         f"kernel_size={kernel}")
    if divisor_override is not None and (not is_int(divisor_override) or divisor_override == 0):
        raise ValueError(f"{fn}: divisor_override must be a non-zero int or None, "
                         f"got {divisor_override!r}")
    return kernel, stride, padding, dilation


def _windows(x: torch.Tensor, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair,
             ceil_mode: bool, fill: float, fn: str) -> torch.Tensor:
    """Every pooling window of ``x`` (B, C, H, W), as a view.

    The result has shape (B, C, H_out, W_out, kh, kw). The input is padded with ``fill``
    (-inf for max, 0 for average); ``ceil_mode``'s last, partial window gets extra
    ``fill`` at the bottom/right so that it fits too.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    H, W = x.shape[-2:]
    h_out = pool_output_size(H, kh, sh, ph, dh, ceil_mode)
    w_out = pool_output_size(W, kw, sw, pw, dw, ceil_mode)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"{fn}: the output would be empty ({h_out} x {w_out}): input "
                         f"{H}x{W} with padding ({ph}, {pw}) is smaller than the "
                         f"window ({span_h}, {span_w}) = dilation*(kernel_size-1)+1")
    extra_h = max(0, (h_out - 1) * sh + span_h - (H + 2 * ph))  # only ceil_mode needs
    extra_w = max(0, (w_out - 1) * sw + span_w - (W + 2 * pw))  # these two
    x = F.pad(x, (pw, pw + extra_w, ph, ph + extra_h), value=fill)
    windows = x.unfold(2, span_h, sh).unfold(3, span_w, sw)  # (.., span_h, span_w)
    return windows[:, :, :h_out, :w_out, ::dh, ::dw]  # every dilation-th tap


def _pytorch_argmax(flat: torch.Tensor, lowest: float, kernel: Pair, stride: Pair,
                    padding: Pair, dilation: Pair) -> torch.Tensor:
    """Where each window's maximum is in ``flat`` (..., H_out, W_out, kh*kw), chosen the
    way PyTorch's kernel chooses it.

    PyTorch scans a window row by row and takes a value only if it is *strictly* larger
    than the best so far, or NaN. So ties go to the first maximum (row-major), a NaN
    beats every number (the last NaN wins), and a window whose real values are all -inf
    reports the first tap that lies inside the input, never the padding.
    """
    index = flat.argmax(-1)  # the first maximum; NaN counts as larger than everything
    best = flat.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # NaN where a window holds one
    # PyTorch keeps the last NaN instead. On an accelerator this runs for every window (an `if`
    # on the data would wait for the device); on the host, reading `any()` is free, and skips it.
    if flat.is_floating_point() and (not on_host(flat) or best.isnan().any()):
        last_nan = flat.shape[-1] - 1 - flat.isnan().flip(-1).to(torch.uint8).argmax(-1)
        index = torch.where(best.isnan(), last_nan, index)
    # Windows holding only padding or -inf point at their first tap inside the input, at or
    # after its first row (column): ceil((padding - window start) / dilation), at least 0.
    # Computed for every window and used where needed: no `if` on the data, no device sync.
    (_, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    h_out, w_out = flat.shape[-3:-1]
    a = (ph - torch.arange(h_out, device=flat.device) * sh).clamp(min=0)
    b = (pw - torch.arange(w_out, device=flat.device) * sw).clamp(min=0)
    first = (-(-a // dh))[:, None] * kw + (-(-b // dw))[None, :]  # (H_out, W_out)
    return torch.where(best == lowest, first, index)


def max_pool2d(x: torch.Tensor, kernel_size: IntPair, stride: Optional[IntPair] = None,
               padding: IntPair = 0, dilation: IntPair = 1, ceil_mode: bool = False,
               return_indices: bool = False):
    """2-D max pooling with the semantics of ``torch.nn.functional.max_pool2d``.

    Args:
        x: input ``(B, C, H, W)``, or unbatched ``(C, H, W)``.
        kernel_size: window size, an int or an ``(h, w)`` pair.
        stride: step between windows; ``None`` (the default) means ``kernel_size``.
        padding: -inf added on both sides, at most ``kernel_size // 2``.
        dilation: spacing between the window's taps.
        ceil_mode: round the output size up (see :func:`pool_output_size`).
        return_indices: also return, for each output, the flat index ``row * W + col``
            of the input element that won its window (what ``F.max_unpool2d`` expects).

    The gradient of each output goes to its window's winner only. Ties go to the first
    maximum in row-major order and a NaN wins its window (the last NaN), as in PyTorch.
    A dilated window that sees only padding gives -inf, as in PyTorch.
    """
    fn = "max_pool2d"
    _check_input(x, fn)
    kernel, stride, padding, dilation = _pool_args(fn, kernel_size, stride, padding,
                                                   dilation)
    unbatched = x.dim() == 3
    x = x.unsqueeze(0) if unbatched else x
    lowest = -float("inf") if x.is_floating_point() else torch.iinfo(x.dtype).min
    windows = _windows(x, kernel, stride, padding, dilation, ceil_mode, lowest, fn)
    B, C, h_out, w_out, kh, kw = windows.shape
    flat = windows.reshape(B, C, h_out, w_out, kh * kw)  # one row per window (a copy)
    index = _pytorch_argmax(flat, lowest, kernel, stride, padding, dilation)
    out = flat.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # gradient goes back here
    if unbatched:
        out = out.squeeze(0)
    if not return_indices:
        return out
    # window-local (tap row, tap column) -> row and column in the unpadded input
    rows = torch.arange(h_out, device=x.device)[:, None] * stride[0] - padding[0]
    cols = torch.arange(w_out, device=x.device)[None, :] * stride[1] - padding[1]
    rows = rows + torch.div(index, kw, rounding_mode="floor") * dilation[0]
    cols = cols + index % kw * dilation[1]
    indices = rows * x.shape[-1] + cols
    return out, indices.squeeze(0) if unbatched else indices


def _window_counts(size: int, out: int, kernel: int, stride: int, padding: int,
                   count_include_pad: bool, device=None) -> torch.Tensor:
    """How many positions each window covers along one axis (the average's divisor).

    With ``count_include_pad`` the padding counts, but ``ceil_mode``'s overhang past
    the padding does not; without it, only real input positions count.
    """
    start = torch.arange(out, device=device) * stride - padding
    end = torch.clamp(start + kernel, max=size + padding)
    if not count_include_pad:
        start, end = start.clamp(min=0), end.clamp(max=size)
    return end - start


def avg_pool2d(x: torch.Tensor, kernel_size: IntPair, stride: Optional[IntPair] = None,
               padding: IntPair = 0, ceil_mode: bool = False,
               count_include_pad: bool = True,
               divisor_override: Optional[int] = None) -> torch.Tensor:
    """2-D average pooling with the semantics of ``torch.nn.functional.avg_pool2d``.

    Args:
        x: input ``(B, C, H, W)``, or unbatched ``(C, H, W)``.
        kernel_size, stride, padding, ceil_mode: as in :func:`max_pool2d`, but the
            padding is zeros.
        count_include_pad: divide by the window's size including the zero padding (the
            default) or by the number of real input values it covers.
        divisor_override: divide every window's sum by this number instead.

    Integer inputs are averaged with integer division rounded toward zero, as PyTorch
    does.
    """
    fn = "avg_pool2d"
    _check_input(x, fn)
    kernel, stride, padding, _ = _pool_args(fn, kernel_size, stride, padding,
                                            divisor_override=divisor_override)
    unbatched = x.dim() == 3
    x = x.unsqueeze(0) if unbatched else x
    windows = _windows(x, kernel, stride, padding, (1, 1), ceil_mode, 0, fn)
    total = windows.sum(dim=(-2, -1))  # (B, C, H_out, W_out); zero padding adds nothing
    if divisor_override is not None:
        divisor = torch.full((), divisor_override, device=x.device)  # made there: no copy, no sync
    else:
        h_out, w_out = total.shape[-2:]
        rows = _window_counts(x.shape[-2], h_out, kernel[0], stride[0], padding[0],
                              count_include_pad, x.device)
        cols = _window_counts(x.shape[-1], w_out, kernel[1], stride[1], padding[1],
                              count_include_pad, x.device)
        divisor = rows[:, None] * cols[None, :]  # (H_out, W_out)
    if x.is_floating_point():
        out = total / divisor
    else:
        out = torch.div(total, divisor, rounding_mode="trunc").to(x.dtype)
    return out.squeeze(0) if unbatched else out


def adaptive_pool_matrix(in_size: int, out_size: int, dtype=None,
                         device=None) -> torch.Tensor:
    """The ``(out_size, in_size)`` matrix whose rows average adaptive pooling's windows.

    Window ``i`` covers the positions from ``floor(i*in/out)`` up to
    ``ceil((i+1)*in/out)`` (exclusive): the windows tile the input, overlapping by one
    position where the sizes do not divide.
    """
    i = torch.arange(out_size, device=device)
    start = torch.div(i * in_size, out_size, rounding_mode="floor")
    end = -torch.div(-(i + 1) * in_size, out_size, rounding_mode="floor")  # rounded up
    j = torch.arange(in_size, device=device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(dtype or torch.get_default_dtype()) / (end - start)[:, None]


def _check_output_size(output_size, fn: str) -> Tuple[Optional[int], Optional[int]]:
    """``7`` -> (7, 7); in a pair, ``None`` keeps that size: ``(None, 3)`` stays."""
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2 and None in output_size:
        return tuple(v if v is None else integer(v, "output_size", fn, 0) for v in output_size)
    return pair(output_size, "output_size", fn)


def adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """Average pooling to a fixed output size, as ``F.adaptive_avg_pool2d`` does it.

    ``output_size`` is an int or an ``(h, w)`` pair; ``None`` keeps that input size.
    The windows depend on the input size (see :func:`adaptive_pool_matrix`), so they
    are not one strided view; but an average is separable, so the result is two matrix
    products: ``rows @ x @ cols.T``.
    """
    fn = "adaptive_avg_pool2d"
    _check_input(x, fn)
    tensor(x, "x", fn, floating=True)
    out_h, out_w = _check_output_size(output_size, fn)
    H, W = x.shape[-2:]
    rows = adaptive_pool_matrix(H, H if out_h is None else out_h, x.dtype, x.device)
    cols = adaptive_pool_matrix(W, W if out_w is None else out_w, x.dtype, x.device)
    return rows @ x @ cols.T  # (out_h, H) @ (B, C, H, W) @ (W, out_w), or (C, H, W)


class MaxPool2d(nn.Module):
    """Max pooling with ``nn.MaxPool2d``'s constructor, attributes and printed form."""

    __constants__ = ["kernel_size", "stride", "padding", "dilation", "return_indices",
                     "ceil_mode"]

    def __init__(self, kernel_size: IntPair, stride: Optional[IntPair] = None,
                 padding: IntPair = 0, dilation: IntPair = 1,
                 return_indices: bool = False, ceil_mode: bool = False):
        super().__init__()
        _pool_args("MaxPool2d", kernel_size, stride, padding, dilation)  # fail early
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, x: torch.Tensor):
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"ceil_mode={self.ceil_mode}")


class AvgPool2d(nn.Module):
    """Average pooling with ``nn.AvgPool2d``'s constructor, attributes, printed form."""

    __constants__ = ["kernel_size", "stride", "padding", "ceil_mode",
                     "count_include_pad", "divisor_override"]

    def __init__(self, kernel_size: IntPair, stride: Optional[IntPair] = None,
                 padding: IntPair = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True,
                 divisor_override: Optional[int] = None):
        super().__init__()
        _pool_args("AvgPool2d", kernel_size, stride, padding,
                   divisor_override=divisor_override)  # fail early
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                          self.ceil_mode, self.count_include_pad, self.divisor_override)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class AdaptiveAvgPool2d(nn.Module):
    """Adaptive average pooling with ``nn.AdaptiveAvgPool2d``'s constructor and form."""

    __constants__ = ["output_size"]

    def __init__(self, output_size):
        super().__init__()
        _check_output_size(output_size, "AdaptiveAvgPool2d")  # fail early
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
