"""2-D convolution from scratch: ``im2col`` (unfold) followed by one matrix product.

Chapter 01 derives this from a slow loop. The functions mirror ``torch.nn.functional``:

* :func:`conv2d` has the arguments, defaults and results of ``F.conv2d``
  (``padding="same"``/``"valid"``, dilation, groups, unbatched 3-D input);
* :func:`im2col` equals ``F.unfold``;
* :class:`Conv2d` has ``nn.Conv2d``'s constructor, parameters, initialisation and state dict.

Like PyTorch (and every deep-learning library) this is *cross-correlation*: the kernel is
not flipped. A learned kernel does not care which convention is used.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import IMAGES, describe, integer, is_int, one_of, pair, positive_int, tensor

__all__ = ["conv_output_size", "im2col", "conv2d", "Conv2d"]

IntPair = Union[int, Tuple[int, int]]


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length along one axis: ``floor((size + 2*padding - dilation*(kernel_size-1) - 1) / stride) + 1``.

    ``dilation*(kernel_size-1) + 1`` is the span the kernel covers; the rest counts how many
    steps of ``stride`` fit in the padded input. A result below 1 is returned as is (the caller
    decides whether an empty output is an error).
    """
    for name, value, minimum in (("size", size, 0), ("kernel_size", kernel_size, 1), ("stride", stride, 1),
                                 ("padding", padding, 0), ("dilation", dilation, 1)):  # not an int: TypeError
        integer(value, name, "conv_output_size", minimum, error=ValueError if is_int(value) else TypeError)
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def _check_padding(padding, stride: Tuple[int, int], fn: str) -> Union[str, Tuple[int, int]]:
    """``padding`` as ``"same"``, ``"valid"`` or an ``(h, w)`` pair; ``"same"`` needs stride 1."""
    if not isinstance(padding, str):
        return pair(padding, "padding", fn)
    if padding not in ("same", "valid"):
        raise ValueError(f"{fn}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    if padding == "same" and stride != (1, 1):
        raise ValueError(f"{fn}: padding='same' needs stride 1 (the output cannot keep the size), got stride={stride}")
    return padding


def _same_padding(kernel: Tuple[int, int], dilation: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that keeps the size at stride 1, as PyTorch pads it.

    An odd total (an even kernel) puts the extra row/column at the end (right/bottom).
    """
    pads = []
    for k, d in zip(reversed(kernel), reversed(dilation)):  # width first, as F.pad expects
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def im2col(x: torch.Tensor, kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0,
           stride: IntPair = 1) -> torch.Tensor:
    """Cut every (dilated) ``kernel_size`` window out of ``x`` and lay it out as a column.

    ``x`` is ``(B, C, H, W)`` (or unbatched ``(C, H, W)``); the result is ``(B, C*kh*kw, L)``
    (or ``(C*kh*kw, L)``) with ``L = H_out*W_out`` windows, ordered channel-major inside a column
    and row-major over windows: exactly ``F.unfold``.
    Built from strided views (``Tensor.unfold``), so no Python loop touches the pixels.
    """
    fn = "im2col"
    tensor(x, "x", fn, (3, 4), IMAGES)
    (kh, kw), (dh, dw) = pair(kernel_size, "kernel_size", fn, 1), pair(dilation, "dilation", fn, 1)
    (ph, pw), (sh, sw) = pair(padding, "padding", fn), pair(stride, "stride", fn, 1)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # the rows and columns one window covers
    if x.shape[-2] + 2 * ph < span_h or x.shape[-1] + 2 * pw < span_w:
        raise ValueError(f"{fn}: the (padded) input ({x.shape[-2] + 2 * ph}, {x.shape[-1] + 2 * pw}) is smaller "
                         f"than the kernel's span ({span_h}, {span_w}) = dilation*(kernel_size-1)+1")
    if x.dim() == 3:
        return im2col(x.unsqueeze(0), kernel_size, dilation, padding, stride).squeeze(0)

    B, C = x.shape[:2]
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    # (B, C, H_out, W_out, span_h, span_w): each window as a view, then keep every dilation-th tap.
    windows = x.unfold(2, span_h, sh).unfold(3, span_w, sw)[..., ::dh, ::dw]
    h_out, w_out = windows.shape[2], windows.shape[3]
    # -> (B, C, kh, kw, H_out, W_out) -> (B, C*kh*kw, H_out*W_out); reshape copies here (the im2col cost).
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(B, C * kh * kw, h_out * w_out)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: IntPair = 1,
           padding: Union[IntPair, str] = 0, dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """2-D convolution (cross-correlation) with the semantics of ``torch.nn.functional.conv2d``.

    Args:
        x: input ``(B, C_in, H, W)``, or unbatched ``(C_in, H, W)``.
        weight: kernels ``(C_out, C_in // groups, kh, kw)``.
        bias: optional ``(C_out,)``.
        stride, dilation: an int or an ``(h, w)`` pair, each >= 1.
        padding: an int or an ``(h, w)`` pair of zeros added on both sides, or ``"valid"``
            (no padding) or ``"same"`` (output size = input size; stride must be 1).
        groups: split the channels into ``groups`` independent convolutions.

    Returns:
        ``(B, C_out, H_out, W_out)`` (or ``(C_out, H_out, W_out)`` for unbatched input), where
        ``H_out = conv_output_size(H, kh, stride, padding, dilation)``.
    """
    fn = "conv2d"
    tensor(x, "x", fn, (3, 4), IMAGES)
    tensor(weight, "weight", fn, (4,), "4-D (out_channels, in_channels/groups, kernel_h, kernel_w)")
    groups = positive_int(groups, "groups", fn)
    (sh, sw), (dh, dw) = pair(stride, "stride", fn, 1), pair(dilation, "dilation", fn, 1)
    padding = _check_padding(padding, (sh, sw), fn)
    c_out, c_in_per_group, kh, kw = weight.shape
    c_in = x.shape[-3]
    if c_in % groups or c_out % groups:
        raise ValueError(f"{fn}: groups={groups} must divide the input's {c_in} channels and weight's {c_out} "
                         f"output channels (weight.shape[0])")
    if c_in != c_in_per_group * groups:
        raise ValueError(f"{fn}: x has {c_in} channels but weight expects weight.shape[1] * groups = "
                         f"{c_in_per_group} * {groups} = {c_in_per_group * groups}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (c_out,)):
        raise ValueError(f"{fn}: bias must have shape ({c_out},), one value per output channel, got {describe(bias)}")
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"{fn}: x, weight and bias must share a dtype, got {x.dtype}, {weight.dtype}"
                        + ("" if bias is None else f", {bias.dtype}"))
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)

    if padding == "same":  # pad here, as PyTorch does (an even kernel puts the extra pixel at the end)
        x = F.pad(x, _same_padding((kh, kw), (dh, dw)))
    ph, pw = (0, 0) if isinstance(padding, str) else padding
    B, _, H, W = x.shape
    h_out = conv_output_size(H, kh, sh, ph, dh)
    w_out = conv_output_size(W, kw, sw, pw, dw)
    if h_out < 1 or w_out < 1:
        raise ValueError(f"{fn}: the output would be empty ({h_out} x {w_out}): input {H}x{W} with padding "
                         f"({ph}, {pw}) is smaller than the kernel's span ({dh * (kh - 1) + 1}, {dw * (kw - 1) + 1})")

    cols = im2col(x, (kh, kw), (dh, dw), (ph, pw), (sh, sw))          # (B, C_in*kh*kw, L)
    cols = cols.view(B, groups, c_in_per_group * kh * kw, h_out * w_out)  # split the channels by group
    w = weight.reshape(groups, c_out // groups, c_in_per_group * kh * kw)  # one matrix per group
    out = torch.matmul(w, cols)                                        # (B, groups, C_out/groups, L)
    out = out.reshape(B, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out.squeeze(0) if unbatched else out


class Conv2d(nn.Module):
    """A convolution layer with ``torch.nn.Conv2d``'s constructor, parameters and initialisation.

    Seeded identically, ``Conv2d(...)`` and ``nn.Conv2d(...)`` start with the same weights, and
    their state dicts load into each other.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: Union[IntPair, str] = 0, dilation: IntPair = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        fn = "Conv2d"
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            positive_int(value, name, fn)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{fn}: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "kernel_size", fn, 1)
        self.stride, self.dilation = pair(stride, "stride", fn, 1), pair(dilation, "dilation", fn, 1)
        self.padding = _check_padding(padding, self.stride, fn)
        self.padding_mode = one_of(padding_mode, "padding_mode", fn, ("zeros", "reflect", "replicate", "circular"))
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's initialisation: uniform with bound 1/sqrt(fan_in) for weight and bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def _explicit_padding(self) -> Tuple[int, int, int, int]:
        """(left, right, top, bottom) for the non-zero padding modes, which pad before convolving."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            return _same_padding(self.kernel_size, self.dilation)
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._explicit_padding(), mode=self.padding_mode)
            return conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s
