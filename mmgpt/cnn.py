"""A small convolutional feature extractor, built from the book's own layers.

Chapter 02 assembles it. It follows ResNet's recipe in miniature:

* a *stem*: a 7x7 stride-2 convolution, batch norm, ReLU and a 3x3 stride-2 max
  pooling, which shrink a 224x224 photo to a 56x56 map;
* *stages* of :class:`ResidualBlock` s; every stage after the first starts by halving
  the resolution (a stride-2 convolution, with a 1x1 projection on the shortcut) while
  it widens the channels.

``SmallCNN()(images)`` maps ``(B, 3, H, W)`` images to a ``(B, C, H', W')`` feature map:
for 224x224 inputs and the default widths, ``(B, 128, 14, 14)``, a grid of 196 vectors
that Chapter 03 reads as a sequence. The convolutions are ``mmgpt.conv.Conv2d`` and the
pooling ``mmgpt.pooling``'s; batch norm and ReLU come from PyTorch.

:func:`receptive_field` computes, for any stack of layers, how many input pixels one
output position can see and how far apart neighbouring outputs look.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import is_int, one_of, pair, positive_int, tensor
from .conv import Conv2d
from .pooling import AvgPool2d, MaxPool2d, pool_output_size

__all__ = ["ReceptiveField", "receptive_field", "ResidualBlock", "SmallCNN"]

Pair = Tuple[int, int]


# -------------------------------------------------------------------------------------
# Receptive field
# -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReceptiveField:
    """What one output position of a stack of layers sees, per axis ``(height, width)``.

    * ``size``: how many input pixels can influence one output (the field's side);
    * ``jump``: input pixels between neighbouring outputs (the product of the strides);
    * ``start``: the centre of the top-left output's field, in input pixel coordinates
      (negative or fractional when padding or even kernels shift it).

    Output ``(i, j)`` sees the input rows ``start[0] + i*jump[0] +- (size[0]-1)/2`` and
    the columns likewise (clipped at the borders, where padding stands in).
    """

    size: Pair
    jump: Pair
    start: Tuple[float, float]

    def box(self, i: int = 0, j: int = 0) -> Tuple[float, float, float, float]:
        """(top, left, bottom, right): the input pixels output ``(i, j)`` sees."""
        top = self.start[0] + i * self.jump[0] - (self.size[0] - 1) / 2
        left = self.start[1] + j * self.jump[1] - (self.size[1] - 1) / 2
        return top, left, top + self.size[0] - 1, left + self.size[1] - 1


# Layers that act on each position separately: they leave the receptive field unchanged.
_POINTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Identity,
              nn.BatchNorm2d, nn.GroupNorm, nn.Dropout, nn.Dropout2d)
_KEYS = ("kernel_size", "stride", "dilation", "padding")


def _geometry(layer, where: str) -> List[Tuple[Pair, Pair, Pair, Pair]]:
    """(kernel, stride, dilation, left padding) of ``layer``, as a list of layers."""
    fn = "receptive_field"
    if hasattr(layer, "receptive_field_layers"):  # ResidualBlock, SmallCNN
        return [g for i, sub in enumerate(layer.receptive_field_layers())
                for g in _geometry(sub, f"{where}[{i}]")]
    if isinstance(layer, nn.Sequential):
        return [g for i, sub in enumerate(layer)
                for g in _geometry(sub, f"{where}[{i}]")]
    if isinstance(layer, _POINTWISE):
        return []
    if isinstance(layer, nn.Module) and hasattr(layer, "kernel_size") and hasattr(layer, "stride"):
        layer = {key: getattr(layer, key) for key in _KEYS if hasattr(layer, key)}  # conv, pooling
    elif isinstance(layer, (tuple, list)) and not any(isinstance(v, nn.Module) for v in layer):
        if not 2 <= len(layer) <= 4:
            raise ValueError(f"{fn}: {where} must be (kernel_size, stride[, dilation[, "
                             f"padding]]), got {layer!r}")
        layer = dict(zip(_KEYS, layer))
    elif not isinstance(layer, dict):
        raise TypeError(f"{fn}: cannot tell the receptive field of {where} = "
                        f"{type(layer).__name__} (adaptive pooling, for example, sees the "
                        f"whole input whatever its size)")
    if set(layer) - set(_KEYS) or "kernel_size" not in layer:
        raise ValueError(f"{fn}: {where} needs kernel_size and may have stride, "
                         f"dilation, padding; got {layer!r}")
    kernel = pair(layer["kernel_size"], "kernel_size", fn, 1)
    stride = kernel if layer.get("stride") is None else pair(layer["stride"], "stride", fn, 1)
    dilation = pair(layer.get("dilation", 1), "dilation", fn, 1)
    padding = layer.get("padding", 0)
    if padding == "same":  # PyTorch puts the odd pixel of the total at the end
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return [(kernel, stride, dilation, pair(0 if padding == "valid" else padding, "padding", fn))]


def receptive_field(layers: Iterable) -> ReceptiveField:
    """The receptive field of ``layers`` applied one after another.

    Each layer is a convolution or pooling module (the book's or PyTorch's), a module
    with a ``receptive_field_layers()`` method (:class:`ResidualBlock`,
    :class:`SmallCNN`), an ``nn.Sequential`` (unrolled), a pointwise layer such as ReLU
    or batch norm (which changes nothing), or a tuple
    ``(kernel_size, stride[, dilation[, padding]])``.

    Per axis, a layer with kernel ``k``, stride ``s``, dilation ``d`` and padding ``p``
    grows the field by ``(k-1)*d`` steps of its input, each ``jump`` pixels long, and
    multiplies the step by ``s``::

        size += (k - 1) * d * jump
        start += ((k - 1) * d / 2 - p) * jump
        jump *= s
    """
    if isinstance(layers, nn.Module) and not isinstance(layers, nn.Sequential):
        layers = [layers]
    size, jump, start = [1, 1], [1, 1], [0.0, 0.0]
    for i, layer in enumerate(layers):
        for kernel, stride, dilation, padding in _geometry(layer, f"layers[{i}]"):
            for axis in range(2):
                reach = (kernel[axis] - 1) * dilation[axis]
                size[axis] += reach * jump[axis]
                start[axis] += (reach / 2 - padding[axis]) * jump[axis]
                jump[axis] *= stride[axis]
    return ReceptiveField(tuple(size), tuple(jump), tuple(start))


# -------------------------------------------------------------------------------------
# The network
# -------------------------------------------------------------------------------------

NORMS = ("batch", "group")


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation after each convolution: ``"batch"`` (ResNet's ``BatchNorm2d``,
    statistics over the batch) or ``"group"`` (``GroupNorm`` with up to 8 groups,
    statistics per sample: the output of one image does not depend on the rest of the
    batch, e.g. when the batch is split over several processes)."""
    one_of(kind, "norm", "make_norm", NORMS)
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(math.gcd(channels, 8), channels)


class ResidualBlock(nn.Module):
    """ResNet's basic block: ``ReLU(residual(x) + shortcut(x))``.

    ``residual`` is conv 3x3 (stride ``stride``) -> batch norm -> ReLU -> conv 3x3 ->
    batch norm. The shortcut is the identity when the shape is kept, else a strided 1x1
    convolution with batch norm (a *projection*) that brings ``x`` to the new shape.
    With the branch at zero the block passes its input through (the input is already
    non-negative after the previous ReLU), so added blocks start near the identity and
    learn corrections. That is what lets ResNets be deep: He et al. (2016) found that
    plain stacks, even well initialised and batch-normalised, fit their training data
    worse as they grow deeper, and residual ones do not (Chapter 02 measures it).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm: str = "batch"):
        super().__init__()
        fn = "ResidualBlock"
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("stride", stride)):
            positive_int(value, name, fn)
        one_of(norm, "norm", fn, NORMS)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = stride
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                make_norm(norm, out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The branch that learns a correction: conv-BN-ReLU-conv-BN."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))

    def receptive_field_layers(self) -> list:
        """The residual branch's convolutions. The shortcut (1x1, same stride, no
        padding) sees a field centred on the same pixel and inside the branch's, so
        the union of the two paths is the branch's field."""
        return [self.conv1, self.conv2]

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class SmallCNN(nn.Module):
    """A ResNet in miniature: a stem, then stages of residual blocks.

    Args:
        in_channels: channels of the input images (3 for RGB).
        widths: channels of each stage. Stage 1 keeps the stem's resolution; every
            later stage halves it.
        blocks_per_stage: residual blocks per stage (ResNet-18 has 2).
        pool: the stem's 3x3 stride-2 pooling: ``"max"`` (ResNet's), ``"avg"`` or
            ``None``.
        norm: ``"batch"`` (ResNet's batch norm) or ``"group"`` (see :func:`make_norm`).

    ``SmallCNN()`` maps ``(B, 3, 224, 224)`` images to a ``(B, 128, 14, 14)`` feature
    map; :meth:`output_shape` predicts the shape for any input and
    :meth:`receptive_field` what one output position sees.
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (32, 64, 128),
                 blocks_per_stage: int = 1, pool: Optional[str] = "max",
                 norm: str = "batch"):
        super().__init__()
        fn = "SmallCNN"
        positive_int(in_channels, "in_channels", fn)
        if not isinstance(widths, (list, tuple)) or not widths or not all(is_int(w) and w > 0 for w in widths):
            raise ValueError(f"{fn}: widths must be a non-empty sequence of positive ints, got {widths!r}")
        positive_int(blocks_per_stage, "blocks_per_stage", fn)
        one_of(pool, "pool", fn, ("max", "avg", None))
        one_of(norm, "norm", fn, NORMS)
        self.in_channels, self.widths = in_channels, tuple(widths)
        self.blocks_per_stage, self.pool_kind = blocks_per_stage, pool
        self.stem = nn.Sequential(
            Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
            make_norm(norm, widths[0]),
            nn.ReLU(),
        )
        if pool == "max":
            self.pool = MaxPool2d(3, stride=2, padding=1)
        elif pool == "avg":
            self.pool = AvgPool2d(3, stride=2, padding=1)
        else:
            self.pool = nn.Identity()
        stages, channels = [], widths[0]
        for index, width in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(ResidualBlock(channels, width, stride, norm))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths[-1]

    # -- shapes and fields ---------------------------------------------------------

    def receptive_field_layers(self) -> list:
        """The layers along the main path, in order (for :func:`receptive_field`)."""
        return [self.stem, self.pool, *self.stages]

    def receptive_field(self) -> ReceptiveField:
        """The receptive field of one position of the output feature map."""
        return receptive_field(self.receptive_field_layers())

    def _spatial(self, size: int) -> int:
        # Every layer pads by kernel_size // 2, so each halving gives ceil(size / 2)
        # and an image of one pixel still gives a non-empty map.
        size = pool_output_size(size, 7, 2, 3)  # stem convolution
        if self.pool_kind is not None:
            size = pool_output_size(size, 3, 2, 1)
        for _ in self.widths[1:]:  # the stride-2 first block of every later stage
            size = pool_output_size(size, 3, 2, 1)
        return size

    def output_shape(self, input_shape: Sequence[int]) -> Tuple[int, ...]:
        """The output's shape for an input of ``input_shape``, ``(B, C, H, W)`` or
        ``(C, H, W)``, from the layers' arithmetic, without running the network."""
        shape = tuple(input_shape)
        self._check_shape(shape)
        return shape[:-3] + (self.out_channels, self._spatial(shape[-2]),
                             self._spatial(shape[-1]))

    def _check_shape(self, shape: Tuple[int, ...]) -> None:
        c = self.in_channels
        if len(shape) not in (3, 4) or shape[-3] != c or min(shape[-2:]) < 1:
            raise ValueError(f"{type(self).__name__}: images must be 4-D (batch, {c}, height, width) or "
                             f"3-D ({c}, height, width): {c} channels, at least 1 pixel high and wide; "
                             f"got shape {shape}")

    # -- forward -------------------------------------------------------------------

    def feature_maps(self, x: torch.Tensor) -> dict:
        """Every intermediate map by name: ``stem``, ``pool``, ``stage1``, ... (the last
        one is the output)."""
        tensor(x, "x", type(self).__name__)
        self._check_shape(tuple(x.shape))
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        maps = {}
        x = maps["stem"] = self.stem(x)
        x = maps["pool"] = self.pool(x)
        for i, stage in enumerate(self.stages, start=1):
            x = maps[f"stage{i}"] = stage(x)
        return {k: v.squeeze(0) for k, v in maps.items()} if unbatched else maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return list(self.feature_maps(x).values())[-1]

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, widths={self.widths}, "
                f"blocks_per_stage={self.blocks_per_stage}, pool={self.pool_kind!r}")
