"""From a grid to a sequence: feature maps and image patches as tokens, with positions.

Chapter 03 derives all of this from loops over positions. What the module holds:

* :func:`feature_map_to_sequence` / :func:`sequence_to_feature_map`: a ``(B, C, H, W)``
  feature map read as ``H*W`` vectors of length ``C`` in row-major (reading) order, and
  back;
* :func:`patchify` / :func:`unpatchify`: an image cut into non-overlapping ``p x p``
  patches, each flattened channel-major (``F.unfold(x, p, stride=p)``, transposed), and
  back; :func:`grid_size` says how many patches fit, or why they do not;
* :class:`PatchEmbed`: a linear layer on those patches, which *is* a convolution with
  kernel = stride = ``p`` (:meth:`PatchEmbed.from_conv` and :meth:`PatchEmbed.to_conv`);
* position embeddings: :class:`LearnedPositionEmbedding` (ViT, GPT-2),
  :func:`sincos_position_embedding_1d` ("Attention Is All You Need") and
  :func:`sincos_position_embedding_2d` (MAE: half the dimensions for the row, half for
  the column).

Like ``F.unfold``, every function also takes unbatched input and then returns unbatched
output.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn

from ._checks import IMAGES, number, pair, positive_int, tensor

__all__ = [
    "feature_map_to_sequence",
    "sequence_to_feature_map",
    "grid_size",
    "patchify",
    "unpatchify",
    "PatchEmbed",
    "LearnedPositionEmbedding",
    "sincos_position_embedding_1d",
    "sincos_position_embedding_2d",
]

IntPair = Union[int, Tuple[int, int]]


# --------------------------------------------------------------------------------------
# Feature map <-> sequence
# --------------------------------------------------------------------------------------

def feature_map_to_sequence(x: torch.Tensor) -> torch.Tensor:
    """Read a feature map as a sequence: one ``C``-vector per spatial position.

    ``x`` is ``(B, C, H, W)`` (or ``(C, H, W)``); the result is ``(B, H*W, C)`` (or
    ``(H*W, C)``). Position ``(i, j)`` becomes token ``i*W + j``: row by row, left to
    right, the order in which we read text. No number is changed, only rearranged.
    """
    tensor(x, "x", "feature_map_to_sequence", (3, 4), IMAGES)
    # (..., C, H, W) -> (..., C, H*W) -> (..., H*W, C): two views, nothing is copied
    return x.flatten(-2).transpose(-1, -2)


def sequence_to_feature_map(seq: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Undo :func:`feature_map_to_sequence`: ``(B, H*W, C)`` -> ``(B, C, H, W)``.

    Unbatched ``(height*width, C)`` gives ``(C, height, width)``.
    """
    fn = "sequence_to_feature_map"
    tensor(seq, "seq", fn, (2, 3), "3-D (batch, positions, channels) or 2-D (positions, channels)")
    height, width = positive_int(height, "height", fn), positive_int(width, "width", fn)
    if seq.shape[-2] != height * width:
        raise ValueError(f"{fn}: seq has {seq.shape[-2]} positions (seq.shape[-2]) but "
                         f"height*width = {height}*{width} = {height * width}")
    # (..., H*W, C) -> (..., C, H*W) -> (..., C, H, W)
    return seq.transpose(-1, -2).unflatten(-1, (height, width))


# --------------------------------------------------------------------------------------
# Image <-> patches
# --------------------------------------------------------------------------------------

def _nearest_multiples(size: int, p: int) -> str:
    below, above = (size // p) * p, (size // p + 1) * p
    return f"{below} or {above}" if below > 0 else f"{above}"


def grid_size(height: int, width: int, patch_size: IntPair) -> Tuple[int, int]:
    """How many patches fit down and across: ``(height // ph, width // pw)``.

    The patches must tile the image exactly. If a side is not a multiple of the patch
    size, the error names the side, the sizes and the nearest sizes that would work
    (resize, crop or pad the image to one of them).
    ``grid_size(224, 224, 16) == (14, 14)``: 196 tokens.
    """
    return _grid_size(height, width, patch_size, "grid_size", "an image of")


def _grid_size(height, width, patch_size, fn: str, subject: str) -> Tuple[int, int]:
    height, width = positive_int(height, "height", fn), positive_int(width, "width", fn)
    ph, pw = pair(patch_size, "patch_size", fn, 1)
    bad = [
        f"{side} {size} is not a multiple of patch_size {p} "
        f"(nearest valid {side}: {_nearest_multiples(size, p)})"
        for side, size, p in (("height", height, ph), ("width", width, pw))
        if size % p
    ]
    if bad:
        raise ValueError(f"{fn}: {subject} {height}x{width} cannot be cut into "
                         f"{ph}x{pw} patches: " + "; ".join(bad)
                         + ". Resize, crop or pad to a valid size.")
    return height // ph, width // pw


def patchify(images: torch.Tensor, patch_size: IntPair) -> torch.Tensor:
    """Cut images into non-overlapping patches and flatten each: a sequence of patches.

    ``images`` is ``(B, C, H, W)`` (or ``(C, H, W)``) with ``H`` and ``W`` multiples of
    the patch size ``p`` (an int or an ``(ph, pw)`` pair). The result is
    ``(B, N, C*ph*pw)`` with ``N = (H/ph) * (W/pw)`` patches in row-major order. Inside
    a patch the numbers are channel-major (channel 0 row by row, then channel 1, ...),
    the order of ``conv.weight[o].flatten()``, so a linear layer with that weight is the
    stride-``p`` convolution. Equals ``F.unfold(images, p, stride=p).transpose(1, 2)``.
    """
    fn = "patchify"
    tensor(images, "images", fn, (3, 4), IMAGES)
    ph, pw = pair(patch_size, "patch_size", fn, 1)
    gh, gw = _grid_size(*images.shape[-2:], (ph, pw), fn, "images of")
    if images.dim() == 3:
        return patchify(images.unsqueeze(0), patch_size).squeeze(0)
    B, C, H, W = images.shape
    # Split each axis into (which patch, where in the patch): (B, C, gh, ph, gw, pw) ...
    x = images.reshape(B, C, gh, ph, gw, pw)
    # ... which-patch axes first, the patch's own axes last: (B, gh, gw, C, ph, pw) ...
    x = x.permute(0, 2, 4, 1, 3, 5)
    # ... and flatten each group: (B, gh*gw, C*ph*pw). This reshape copies.
    return x.reshape(B, gh * gw, C * ph * pw)


def unpatchify(patches: torch.Tensor, patch_size: IntPair, height: int, width: int,
               channels: Optional[int] = None) -> torch.Tensor:
    """Undo :func:`patchify`: ``(B, N, C*ph*pw)`` -> ``(B, C, height, width)``, exactly.

    ``channels`` is worked out from the patch length when not given (and checked when
    given). Unbatched ``(N, C*ph*pw)`` gives ``(C, height, width)``.
    """
    fn = "unpatchify"
    tensor(patches, "patches", fn, (2, 3), "3-D (batch, num_patches, channels*ph*pw) or 2-D")
    ph, pw = pair(patch_size, "patch_size", fn, 1)
    gh, gw = _grid_size(height, width, (ph, pw), fn, "an image of")
    N, D = patches.shape[-2:]
    if N != gh * gw:
        raise ValueError(f"{fn}: patches has {N} patches (patches.shape[-2]) but a "
                         f"{height}x{width} image cut into {ph}x{pw} patches has "
                         f"{gh}*{gw} = {gh * gw}")
    if channels is None and D % (ph * pw):
        raise ValueError(f"{fn}: patches has length {D} (patches.shape[-1]), not a multiple of "
                         f"patch_size {ph}x{pw} = {ph * pw}, so it cannot hold whole channels")
    channels = positive_int(D // (ph * pw) if channels is None else channels, "channels", fn)
    if D != channels * ph * pw:
        raise ValueError(f"{fn}: patches has length {D} (patches.shape[-1]) but "
                         f"channels*ph*pw = {channels}*{ph}*{pw} = {channels * ph * pw}")
    if patches.dim() == 2:
        return unpatchify(patches.unsqueeze(0), patch_size, height, width, channels).squeeze(0)

    B = patches.shape[0]
    x = patches.reshape(B, gh, gw, channels, ph, pw)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, ph, gw, pw)
    return x.reshape(B, channels, height, width)


# --------------------------------------------------------------------------------------
# Patch embedding: a linear layer on patches == a convolution with kernel = stride = p
# --------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """Cut images into patches and project each to ``embed_dim``: the ViT's first layer.

    Implemented as :func:`patchify` and ``nn.Linear(in_channels*ph*pw, embed_dim)``.
    That is exactly ``nn.Conv2d(in_channels, embed_dim, kernel_size=p, stride=p)`` with
    its output grid flattened into a sequence: with the conv's weight reshaped to
    ``(embed_dim, in_channels*ph*pw)`` the two give the same tokens and gradients.
    Seeded identically, they even start with the same weights (both draw uniformly with
    bound ``1/sqrt(in_channels*ph*pw)``). :meth:`from_conv` and :meth:`to_conv` convert.

    Args:
        img_size: optional ``H`` or ``(H, W)`` the layer is built for; when given,
            inputs must have that size, and ``grid_size`` and ``num_patches`` are known.
        patch_size: ``p`` or ``(ph, pw)``.
        in_channels: channels of the input images (3 for RGB).
        embed_dim: length of each output token.
        bias: whether the projection has a bias.

    Input ``(B, in_channels, H, W)``, output ``(B, N, embed_dim)`` (or both unbatched).
    """

    def __init__(self, img_size: Optional[IntPair] = None, patch_size: IntPair = 16,
                 in_channels: int = 3, embed_dim: int = 768, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        fn = "PatchEmbed"
        self.patch_size = pair(patch_size, "patch_size", fn, 1)
        self.in_channels = positive_int(in_channels, "in_channels", fn)
        self.embed_dim = positive_int(embed_dim, "embed_dim", fn)
        if img_size is None:
            self.img_size = self.grid_size = self.num_patches = None
        else:
            self.img_size = pair(img_size, "img_size", fn, 1)
            self.grid_size = _grid_size(*self.img_size, self.patch_size, fn, "img_size")
            self.num_patches = self.grid_size[0] * self.grid_size[1]
        ph, pw = self.patch_size
        self.proj = nn.Linear(in_channels * ph * pw, embed_dim, bias=bias,
                              device=device, dtype=dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fn = "PatchEmbed"
        tensor(images, "images", fn, (3, 4), IMAGES)
        if images.shape[-3] != self.in_channels:
            raise ValueError(f"{fn}: images have {images.shape[-3]} channels (images.shape[-3]) but "
                             f"in_channels={self.in_channels}")
        if self.img_size is not None and tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(f"{fn}: images are {tuple(images.shape[-2:])} but the layer was built for "
                             f"img_size={self.img_size} (build it with img_size=None "
                             f"to accept any size divisible by the patch size)")
        return self.proj(patchify(images, self.patch_size))  # (B, N, embed_dim)

    @property
    def conv_weight(self) -> torch.Tensor:
        """The projection's weight as a kernel ``(embed_dim, in_channels, ph, pw)``."""
        return self.proj.weight.view(self.embed_dim, self.in_channels, *self.patch_size)

    @classmethod
    def from_conv(cls, conv: nn.Module, img_size: Optional[IntPair] = None):
        """A PatchEmbed that computes what ``conv`` computes (its weights copied).

        ``conv`` is an ``nn.Conv2d`` (or ``mmgpt.conv.Conv2d``) whose kernel size
        equals its stride, with no padding, dilation 1 and groups 1: a convolution that
        looks at non-overlapping patches, which is what a linear layer on patches is.
        """
        fn = "PatchEmbed.from_conv"
        needed = ("weight", "bias", "kernel_size", "stride", "padding", "dilation",
                  "groups")
        if not all(hasattr(conv, a) for a in needed) or not (
                isinstance(conv.weight, torch.Tensor) and conv.weight.dim() == 4):
            raise TypeError(f"{fn}: conv must be an nn.Conv2d or mmgpt.conv.Conv2d, "
                            f"got {type(conv).__name__}")
        kernel, stride, dilation = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation)
        if kernel != stride or conv.padding not in ((0, 0), "valid") or dilation != (1, 1) or conv.groups != 1:
            raise ValueError(f"{fn}: conv must look at non-overlapping patches: kernel_size = stride, "
                             f"padding 0, dilation 1, groups 1; got kernel_size={kernel}, stride={stride}, "
                             f"padding={conv.padding!r}, dilation={dilation}, groups={conv.groups}")
        out_channels, in_channels = conv.weight.shape[:2]
        layer = cls(img_size, kernel, in_channels, out_channels,
                    bias=conv.bias is not None, device=conv.weight.device,
                    dtype=conv.weight.dtype)
        with torch.no_grad():
            # (out, in, ph, pw) -> (out, in*ph*pw): channel-major, the order of patchify
            layer.proj.weight.copy_(conv.weight.reshape(out_channels, -1))
            if conv.bias is not None:
                layer.proj.bias.copy_(conv.bias)
        return layer

    def to_conv(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` (kernel = stride = patch size) with these weights (copied).

        ``conv(x).flatten(2).transpose(1, 2)`` equals ``self(x)``.
        """
        w = self.proj.weight
        conv = nn.Conv2d(self.in_channels, self.embed_dim, kernel_size=self.patch_size,
                         stride=self.patch_size, bias=self.proj.bias is not None,
                         device=w.device, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.conv_weight)
            if self.proj.bias is not None:
                conv.bias.copy_(self.proj.bias)
        return conv

    def extra_repr(self) -> str:
        s = (f"patch_size={self.patch_size}, in_channels={self.in_channels}, "
             f"embed_dim={self.embed_dim}")
        if self.img_size is not None:
            s = f"img_size={self.img_size}, {s}, num_patches={self.num_patches}"
        return s


# --------------------------------------------------------------------------------------
# Position embeddings
# --------------------------------------------------------------------------------------

class LearnedPositionEmbedding(nn.Module):
    """One learned vector per position, added to the tokens (ViT, CLIP, GPT-2).

    ``weight`` is ``(num_positions, dim)``, drawn from a normal distribution with
    standard deviation 0.02, ViT's scale, and cut off at two standard deviations (ViT's
    own is not cut off) so that no position starts far from the others.
    ``forward(x)`` adds its first ``N`` rows to ``x`` of shape ``(B, N, dim)`` (or
    ``(N, dim)``), ``N <= num_positions``. The model learns where things are only from
    data, and only for the positions it was trained with.
    """

    def __init__(self, num_positions: int, dim: int, device=None, dtype=None):
        super().__init__()
        fn = "LearnedPositionEmbedding"
        self.num_positions = positive_int(num_positions, "num_positions", fn)
        self.dim = positive_int(dim, "dim", fn)
        self.weight = nn.Parameter(torch.empty(num_positions, dim, device=device,
                                               dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.weight, std=0.02, a=-0.04, b=0.04)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = "LearnedPositionEmbedding"
        tensor(x, "x", fn, (2, 3), "3-D (batch, positions, dim) or 2-D (positions, dim)")
        n, d = x.shape[-2:]
        if n > self.num_positions or d != self.dim:
            raise ValueError(f"{fn}: x has {n} positions and dim {d} (x.shape[-2:]) but the embedding "
                             f"has num_positions={self.num_positions} and dim={self.dim}")
        return x + self.weight[:n]  # position n gets row n, the same in every batch

    def extra_repr(self) -> str:
        return f"num_positions={self.num_positions}, dim={self.dim}"


def _check_sincos(dim: int, divisor: int, base, fn: str) -> float:
    """``dim`` a positive multiple of ``divisor``, ``base`` a number > 1 (returned as a float)."""
    if positive_int(dim, "dim", fn) % divisor:
        why = ("one sin and one cos per frequency" if divisor == 2 else
               "half for rows, half for columns, each a sin and a cos per frequency")
        raise ValueError(f"{fn}: dim must be divisible by {divisor} ({why}), got dim={dim}")
    return number(base, "base", fn, low=1, low_open=True)


def _sincos(positions: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """Rows ``[sin(p*w_0), cos(p*w_0), sin(p*w_1), ...]``, ``w_k = base**(-2k/dim)``."""
    k = torch.arange(dim // 2, dtype=torch.float64)
    omega = base ** (-2 * k / dim)  # (dim/2,) speeds: 1 radian per step down to ~1/base
    angles = positions.to(torch.float64)[:, None] * omega  # (n, dim/2)
    # (n, dim/2, 2) -> (n, dim): sin and cos of each angle side by side, interleaved
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def sincos_position_embedding_1d(n: int, dim: int, base: float = 10000.0,
                                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed sinusoidal embedding of "Attention Is All You Need": ``(n, dim)``.

    ``PE[p, 2k] = sin(p / base**(2k/dim))``, ``PE[p, 2k+1] = cos(p / base**(2k/dim))``:
    each pair of dimensions is a clock hand turning at its own speed, from one radian
    per position down to one turn every ``2*pi*base`` positions. Nothing is learned.
    Computed in float64, returned as ``dtype``.
    """
    fn = "sincos_position_embedding_1d"
    n, base = positive_int(n, "n", fn), _check_sincos(dim, 2, base, fn)
    return _sincos(torch.arange(n), dim, base).to(dtype)


def sincos_position_embedding_2d(height: int, width: int, dim: int,
                                 base: float = 10000.0,
                                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A fixed 2-D sinusoidal embedding of a ``height x width`` grid: ``(H*W, dim)``.

    As in MAE and later ViTs: for the token at row-major position ``i*width + j``, the
    first ``dim/2`` dimensions are the 1-D embedding of the row ``i``, the last
    ``dim/2`` that of the column ``j``. Tokens in the same row share the first half,
    tokens in the same column the second. (MAE's code puts the column half first and
    all sines before all cosines: a fixed permutation of the dimensions, which changes
    no dot product.)
    """
    fn = "sincos_position_embedding_2d"
    height, width = positive_int(height, "height", fn), positive_int(width, "width", fn)
    base = _check_sincos(dim, 4, base, fn)
    rows = torch.arange(height).repeat_interleave(width)  # 0,0,...,0,1,1,...: row i
    cols = torch.arange(width).repeat(height)  # 0,1,...,W-1,0,1,...: column j
    half = dim // 2
    embedding = torch.cat([_sincos(rows, half, base), _sincos(cols, half, base)], dim=1)
    return embedding.to(dtype)
