"""Tests for ``mmgpt.patches``: sequences, patches, the patch embedding and position embeddings.

* ``feature_map_to_sequence`` against an explicit loop over positions and ``permute``/``reshape``;
  ``sequence_to_feature_map`` undoes it exactly (``torch.equal``);
* ``patchify`` against ``F.unfold(x, p, stride=p).transpose(1, 2)`` (square and rectangular
  patches, batched and unbatched, non-contiguous inputs, gradients), against
  ``F.pixel_unshuffle`` and the feature-map route; ``unpatchify`` undoes it exactly and equals
  ``F.fold``;
* ``PatchEmbed`` against ``nn.Conv2d(kernel_size=p, stride=p)`` flattened into a sequence:
  initialisation under the same seed, forward, and backward (input, weight mapped back to the
  kernel's shape, bias), via ``from_conv``/``to_conv`` both ways, in float64;
* the 1-D sin-cos embedding against the closed form of "Attention Is All You Need" computed
  here with ``math``; its relative-position properties; the 2-D one's row/column structure;
* ``LearnedPositionEmbedding``: shape, parameters, initialisation, what forward adds;
* bad arguments raise errors naming the argument.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close
from torch import nn

from mmgpt.conv import Conv2d
from mmgpt.patches import (
    LearnedPositionEmbedding,
    PatchEmbed,
    feature_map_to_sequence,
    grid_size,
    patchify,
    sequence_to_feature_map,
    sincos_position_embedding_1d,
    sincos_position_embedding_2d,
    unpatchify,
)

DTYPE = torch.float64
ATOL = 1e-10  # float64 round-off here is ~1e-14; a wrong index is O(1)
ERRORS = (ValueError, TypeError)


def _randn(*shape, seed=0, dtype=DTYPE):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _draw_shapes(n: int, seed: int) -> list[dict]:
    """Random (batch, channels, patch, grid) combinations; patch sizes may be rectangular."""
    rng = random.Random(seed)
    shapes = []
    for index in range(n):
        ph = rng.choice([1, 2, 3, 4, 7])
        pw = ph if rng.random() < 0.6 else rng.choice([1, 2, 3, 5])
        gh, gw = rng.randint(1, 5), rng.randint(1, 5)
        shapes.append(dict(index=index, batch=rng.choice([None, 1, 2, 3]), channels=rng.randint(1, 4),
                           patch=(ph, pw), grid=(gh, gw), size=(gh * ph, gw * pw)))
    return shapes


SHAPES = _draw_shapes(60, seed=20240612)


def _shape_id(s: dict) -> str:
    b = "none" if s["batch"] is None else s["batch"]
    return f"{s['index']}-b{b}-c{s['channels']}-p{s['patch'][0]}x{s['patch'][1]}-g{s['grid'][0]}x{s['grid'][1]}"


def _images(s: dict, seed: int) -> torch.Tensor:
    shape = (s["channels"], *s["size"])
    return _randn(*(shape if s["batch"] is None else (s["batch"], *shape)), seed=seed)


def _patch_arg(s: dict):
    ph, pw = s["patch"]
    return ph if ph == pw else (ph, pw)


def test_random_shapes_cover_the_cases():
    checks = {
        "unbatched": any(s["batch"] is None for s in SHAPES),
        "batch > 1": any((s["batch"] or 0) > 1 for s in SHAPES),
        "rectangular patches": any(s["patch"][0] != s["patch"][1] for s in SHAPES),
        "patch 1": any(s["patch"] == (1, 1) for s in SHAPES),
        "one channel": any(s["channels"] == 1 for s in SHAPES),
        "several channels": any(s["channels"] >= 3 for s in SHAPES),
        "non-square grid": any(s["grid"][0] != s["grid"][1] for s in SHAPES),
        "a single patch": any(s["grid"] == (1, 1) for s in SHAPES),
    }
    assert all(checks.values()), [name for name, ok in checks.items() if not ok]


# ---------------------------------------------------------------------------------------------
# Feature map <-> sequence
# ---------------------------------------------------------------------------------------------

def test_feature_map_to_sequence_is_row_major_by_hand():
    x = torch.arange(2 * 3 * 4).reshape(1, 2, 3, 4)  # channel c, row i, column j: 12c + 4i + j
    seq = feature_map_to_sequence(x)
    assert seq.shape == (1, 12, 2)
    for i in range(3):
        for j in range(4):
            assert seq[0, i * 4 + j].tolist() == [4 * i + j, 12 + 4 * i + j]


@pytest.mark.parametrize("s", SHAPES[:30], ids=_shape_id)
def test_feature_map_to_sequence_matches_a_loop_and_round_trips(s):
    x = _images(s, seed=s["index"])
    seq = feature_map_to_sequence(x)
    batched = x if x.dim() == 4 else x[None]
    B, C, H, W = batched.shape
    expected = torch.empty(B, H * W, C, dtype=x.dtype)
    for i in range(H):
        for j in range(W):
            expected[:, i * W + j] = batched[:, :, i, j]
    if x.dim() == 3:
        expected = expected[0]
    assert torch.equal(seq, expected)
    assert torch.equal(seq, x.flatten(-2).movedim(-2, -1))
    back = sequence_to_feature_map(seq, H, W)
    assert back.shape == x.shape and torch.equal(back, x)
    assert torch.equal(feature_map_to_sequence(sequence_to_feature_map(expected, H, W)), expected)


# ---------------------------------------------------------------------------------------------
# patchify / unpatchify
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("s", SHAPES, ids=_shape_id)
def test_patchify_equals_unfold_with_stride_p(s):
    x = _images(s, seed=100 + s["index"])
    p = _patch_arg(s)
    out = patchify(x, p)
    ph, pw = s["patch"]
    n, d = s["grid"][0] * s["grid"][1], s["channels"] * ph * pw
    assert out.shape == ((n, d) if s["batch"] is None else (s["batch"], n, d))
    assert torch.equal(out, F.unfold(x, p, stride=p).transpose(-1, -2))


@pytest.mark.parametrize("s", SHAPES, ids=_shape_id)
def test_unpatchify_inverts_patchify_exactly(s):
    x = _images(s, seed=200 + s["index"])
    p = _patch_arg(s)
    H, W = s["size"]
    patches = patchify(x, p)
    assert torch.equal(unpatchify(patches, p, H, W), x)
    assert torch.equal(unpatchify(patches, p, H, W, channels=s["channels"]), x)
    other = _randn(*patches.shape, seed=300 + s["index"])
    assert torch.equal(patchify(unpatchify(other, p, H, W), p), other)
    folded = F.fold(other.transpose(-1, -2), (H, W), p, stride=p)
    assert torch.equal(unpatchify(other, p, H, W), folded)


def test_patchify_by_hand_is_channel_major_inside_a_patch():
    x = torch.arange(2 * 4 * 4).reshape(1, 2, 4, 4)  # 16c + 4i + j
    patches = patchify(x, 2)
    assert patches.shape == (1, 4, 8)
    # patch 1 is the top-right 2x2 block: channel 0's four pixels, then channel 1's
    assert patches[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]
    # patch 2 is the bottom-left block (row-major order of patches)
    assert patches[0, 2].tolist() == [8, 9, 12, 13, 24, 25, 28, 29]


def test_patchify_with_patch_1_is_the_feature_map_sequence():
    x = _randn(2, 5, 3, 4)
    assert torch.equal(patchify(x, 1), feature_map_to_sequence(x))


@pytest.mark.parametrize("p", [2, 3, 4])
def test_patchify_is_pixel_unshuffle_then_sequence(p):
    x = _randn(2, 3, 4 * p, 2 * p, seed=p)
    assert torch.equal(patchify(x, p), feature_map_to_sequence(F.pixel_unshuffle(x, p)))


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_patchify_non_contiguous_inputs(layout):
    if layout == "channels_last":
        x = _randn(2, 8, 12, 3).permute(0, 3, 1, 2)
    elif layout == "transposed":
        x = _randn(2, 3, 12, 8).transpose(2, 3)
    else:
        x = _randn(2, 6, 17, 24)[:, ::2, 1:, ::3]
    assert not x.is_contiguous()
    for p in (2, 4, (4, 2)):
        assert torch.equal(patchify(x, p), F.unfold(x, p, stride=p).transpose(1, 2))
        assert torch.equal(unpatchify(patchify(x, p), p, *x.shape[-2:]), x)


def test_patchify_and_unpatchify_gradients():
    x = _randn(2, 3, 8, 12, seed=1).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    upstream = _randn(2, 6, 48, seed=2)
    patchify(x, 4).backward(upstream)
    F.unfold(x_ref, 4, stride=4).transpose(1, 2).backward(upstream)
    assert torch.equal(x.grad, x_ref.grad)
    assert torch.equal(x.grad, unpatchify(upstream, 4, 8, 12))  # the backward of a permutation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.bool])
def test_patchify_keeps_dtype(dtype):
    x = (torch.arange(2 * 3 * 4 * 4) % 5).reshape(2, 3, 4, 4).to(dtype)
    out = patchify(x, 2)
    assert out.dtype == dtype and torch.equal(unpatchify(out, 2, 4, 4), x)


def test_grid_size():
    assert grid_size(224, 224, 16) == (14, 14)
    assert grid_size(224, 224, 14) == (16, 16)
    assert grid_size(336, 336, 14) == (24, 24)
    assert grid_size(30, 20, (3, 5)) == (10, 4)


# ---------------------------------------------------------------------------------------------
# PatchEmbed == Conv2d(kernel_size=p, stride=p)
# ---------------------------------------------------------------------------------------------

def _conv_as_sequence(conv, x):
    out = conv(x)
    return out.flatten(-2).transpose(-1, -2)


EMBED_CASES = [
    dict(c=3, e=8, p=4, size=(16, 12), batch=2, bias=True),
    dict(c=1, e=5, p=(2, 3), size=(6, 9), batch=3, bias=True),
    dict(c=4, e=6, p=1, size=(3, 5), batch=1, bias=False),
    dict(c=3, e=7, p=7, size=(14, 21), batch=None, bias=True),
    dict(c=2, e=3, p=(4, 1), size=(8, 3), batch=2, bias=False),
]


@pytest.mark.parametrize("case", EMBED_CASES, ids=lambda c: f"c{c['c']}-e{c['e']}-p{c['p']}-b{c['batch']}")
@pytest.mark.parametrize("direction", ["from_conv", "to_conv"])
def test_patch_embed_equals_conv_forward_and_backward(case, direction):
    torch.manual_seed(0)
    p = case["p"]
    if direction == "from_conv":
        conv = nn.Conv2d(case["c"], case["e"], p, stride=p, bias=case["bias"], dtype=DTYPE)
        with torch.no_grad():  # values far from the default init, so nothing matches by accident
            conv.weight.normal_()
            if conv.bias is not None:
                conv.bias.normal_()
        embed = PatchEmbed.from_conv(conv)
    else:
        embed = PatchEmbed(None, p, case["c"], case["e"], bias=case["bias"], dtype=DTYPE)
        with torch.no_grad():
            embed.proj.weight.normal_()
            if embed.proj.bias is not None:
                embed.proj.bias.normal_()
        conv = embed.to_conv()
        assert isinstance(conv, nn.Conv2d)
        assert conv.kernel_size == conv.stride == embed.patch_size
    shape = (case["c"], *case["size"]) if case["batch"] is None else (case["batch"], case["c"], *case["size"])
    x = _randn(*shape, seed=3).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ours, ref = embed(x), _conv_as_sequence(conv, x_ref)
    assert ours.shape == ref.shape
    assert_close(ours, ref, "output", ATOL)

    upstream = _randn(*ref.shape, seed=4)
    ours.backward(upstream)
    ref.backward(upstream)
    assert_close(x.grad, x_ref.grad, "x.grad", ATOL)
    # the linear layer's weight gradient is the convolution kernel's gradient, flattened
    assert embed.proj.weight.grad.shape == (case["e"], conv.weight[0].numel())
    assert_close(embed.proj.weight.grad.view_as(conv.weight), conv.weight.grad, "weight.grad", ATOL)
    if case["bias"]:
        assert_close(embed.proj.bias.grad, conv.bias.grad, "bias.grad", ATOL)
    else:
        assert embed.proj.bias is None and conv.bias is None


def test_patch_embed_from_mmgpt_conv2d():
    torch.manual_seed(1)
    conv = Conv2d(3, 6, kernel_size=4, stride=4, dtype=DTYPE)
    embed = PatchEmbed.from_conv(conv, img_size=(8, 12))
    x = _randn(2, 3, 8, 12, seed=5)
    assert_close(embed(x), _conv_as_sequence(conv, x), "PatchEmbed vs Conv2d", ATOL)
    assert embed.num_patches == 6 and embed.grid_size == (2, 3)


def test_patch_embed_starts_like_conv_under_the_same_seed():
    torch.manual_seed(123)
    embed = PatchEmbed(224, 16, 3, 32)
    torch.manual_seed(123)
    conv = nn.Conv2d(3, 32, 16, stride=16)
    assert torch.equal(embed.conv_weight, conv.weight)
    assert torch.equal(embed.proj.bias, conv.bias)
    x = torch.randn(1, 3, 224, 224)
    assert_close(embed(x), _conv_as_sequence(conv, x), "float32 PatchEmbed vs nn.Conv2d", 1e-5, rtol=1e-5)


def test_patch_embed_shapes_and_parameters():
    embed = PatchEmbed(img_size=224, patch_size=14, in_channels=3, embed_dim=1024)
    assert embed.grid_size == (16, 16) and embed.num_patches == 256
    assert sum(p.numel() for p in embed.parameters()) == 3 * 14 * 14 * 1024 + 1024
    assert embed.conv_weight.shape == (1024, 3, 14, 14)
    assert embed.conv_weight.data_ptr() == embed.proj.weight.data_ptr()  # a view, not a copy
    out = PatchEmbed(None, 8, 2, 5)(torch.zeros(3, 2, 16, 24))
    assert out.shape == (3, 6, 5)
    assert PatchEmbed(None, 8, 2, 5)(torch.zeros(2, 16, 24)).shape == (6, 5)
    assert "num_patches=256" in repr(embed)


PATCH_EMBED_CTOR_ERRORS = [
    ("patch_size-0", dict(patch_size=0), r"\bpatch_size\b"),
    ("patch_size-3-tuple", dict(patch_size=(2, 2, 2)), r"\bpatch_size\b"),
    ("in_channels-0", dict(in_channels=0), r"\bin_channels\b"),
    ("embed_dim-float", dict(embed_dim=8.0), r"\bembed_dim\b"),
    ("img_size-not-divisible", dict(img_size=225, patch_size=16), r"(?s)img_size.*224 or 240"),
    ("img_size-0", dict(img_size=0), r"\bimg_size\b"),
]


@pytest.mark.parametrize("overrides,pattern", [c[1:] for c in PATCH_EMBED_CTOR_ERRORS],
                         ids=[c[0] for c in PATCH_EMBED_CTOR_ERRORS])
def test_patch_embed_constructor_rejects_bad_arguments(overrides, pattern):
    base = dict(img_size=None, patch_size=4, in_channels=3, embed_dim=8)
    PatchEmbed(**base)
    with pytest.raises(ERRORS, match=pattern):
        PatchEmbed(**{**base, **overrides})


def test_patch_embed_forward_rejects_wrong_input():
    embed = PatchEmbed(img_size=16, patch_size=4, in_channels=3, embed_dim=8)
    embed(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ERRORS, match=r"(?s)4 channels.*in_channels=3"):
        embed(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ERRORS, match=r"\bimg_size\b"):
        embed(torch.zeros(1, 3, 16, 20))
    with pytest.raises(ERRORS, match=r"\bimages\b.*4-D"):
        embed(torch.zeros(3, 16))
    with pytest.raises(ERRORS, match=r"(?s)width 18.*16 or 20"):
        PatchEmbed(None, 4, 3, 8)(torch.zeros(1, 3, 16, 18))


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(kernel_size=4, stride=2), r"(?s)kernel_size.*stride"),
    (dict(kernel_size=4, stride=4, padding=1), r"\bpadding\b"),
    (dict(kernel_size=4, stride=4, dilation=2), r"\bdilation\b"),
    (dict(kernel_size=4, stride=4, groups=3), r"\bgroups\b"),
], ids=["overlapping", "padding", "dilation", "groups"])
def test_patch_embed_from_conv_rejects_convs_that_are_not_patch_embeddings(kwargs, pattern):
    conv = nn.Conv2d(3, 6, **kwargs)
    with pytest.raises(ERRORS, match=pattern):
        PatchEmbed.from_conv(conv)


def test_patch_embed_from_conv_rejects_other_modules():
    with pytest.raises(TypeError, match=r"\bconv\b"):
        PatchEmbed.from_conv(nn.Linear(3, 4))


# ---------------------------------------------------------------------------------------------
# patchify / unpatchify / sequence errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,pattern", [
    (lambda: patchify(torch.zeros(1, 3, 225, 224), 16), r"(?s)height 225.*patch_size 16.*224 or 240"),
    (lambda: patchify(torch.zeros(1, 3, 224, 230), 16), r"(?s)width 230.*224 or 240"),
    (lambda: patchify(torch.zeros(1, 3, 8, 8), 16), r"(?s)height 8.*nearest valid height: 16\)"),
    (lambda: patchify(torch.zeros(3, 8), 2), r"\bimages\b.*4-D"),
    (lambda: patchify(torch.zeros(1, 1, 3, 8, 8), 2), r"\bimages\b.*4-D"),
    (lambda: patchify([[1.0]], 2), r"\bimages\b.*tensor"),
    (lambda: patchify(torch.zeros(1, 3, 8, 8), 0), r"\bpatch_size\b"),
    (lambda: patchify(torch.zeros(1, 3, 8, 8), 2.0), r"\bpatch_size\b"),
    (lambda: unpatchify(torch.zeros(1, 4, 12), 2, 4, 6), r"(?s)patches.*4 patches.*2\*3 = 6"),
    (lambda: unpatchify(torch.zeros(1, 4, 13), 2, 4, 4), r"(?s)patches.*13.*multiple"),
    (lambda: unpatchify(torch.zeros(1, 4, 12), 2, 4, 4, channels=2), r"(?s)channels\*ph\*pw = 2\*2\*2"),
    (lambda: unpatchify(torch.zeros(1, 4, 12), 2, 4, 4, channels=0), r"\bchannels\b"),
    (lambda: unpatchify(torch.zeros(4, 3, 2, 2), 2, 4, 4), r"\bpatches\b.*3-D"),
    (lambda: unpatchify(torch.zeros(1, 4, 12), 2, 5, 4), r"\bheight 5\b"),
    (lambda: unpatchify(torch.zeros(1, 4, 12), 2, 0, 4), r"\bheight\b"),
    (lambda: feature_map_to_sequence(torch.zeros(3, 4)), r"\bx\b.*4-D"),
    (lambda: sequence_to_feature_map(torch.zeros(1, 12, 3), 3, 5), r"(?s)seq.*12 positions.*3\*5 = 15"),
    (lambda: sequence_to_feature_map(torch.zeros(12), 3, 4), r"\bseq\b.*3-D"),
    (lambda: sequence_to_feature_map(torch.zeros(1, 12, 3), 0, 4), r"\bheight\b"),
    (lambda: sequence_to_feature_map(torch.zeros(1, 12, 3), 3, 4.0), r"\bwidth\b"),
    (lambda: grid_size(10, 16, 4), r"(?s)height 10.*8 or 12"),
], ids=["height", "width", "smaller-than-patch", "images-2d", "images-5d", "images-list", "patch-0",
        "patch-float", "unpatchify-count", "unpatchify-length", "unpatchify-channels", "unpatchify-channels-0",
        "unpatchify-4d", "unpatchify-height", "unpatchify-height-0", "fm-2d", "seq-count", "seq-1d",
        "seq-height-0", "seq-width-float", "grid_size"])
def test_bad_arguments_raise_errors_that_name_them(call, pattern):
    with pytest.raises(ERRORS, match=pattern):
        call()


# ---------------------------------------------------------------------------------------------
# Sin-cos position embeddings
# ---------------------------------------------------------------------------------------------

def _closed_form_1d(n: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/dim)), PE(pos, 2i+1) = cos(pos / base^(2i/dim)), with math."""
    rows = []
    for pos in range(n):
        row = []
        for k in range(dim):
            angle = pos / base ** (2 * (k // 2) / dim)
            row.append(math.sin(angle) if k % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("n,dim,base", [(1, 2, 10000.0), (50, 16, 10000.0), (7, 6, 100.0), (200, 64, 10000.0),
                                        (33, 10, 2)])
def test_sincos_1d_matches_the_closed_form(n, dim, base):
    pe = sincos_position_embedding_1d(n, dim, base=base, dtype=torch.float64)
    assert pe.shape == (n, dim) and pe.dtype == torch.float64
    assert_close(pe, _closed_form_1d(n, dim, base), "vs the closed form", 1e-12)
    pe32 = sincos_position_embedding_1d(n, dim, base=base)
    assert pe32.dtype == torch.float32
    assert torch.equal(pe32, pe.float())  # computed in float64, then rounded once


def test_sincos_1d_encodes_relative_positions():
    n, dim = 40, 16
    pe = sincos_position_embedding_1d(n, dim, dtype=torch.float64)
    # The dot product of two positions depends only on their offset: sum_i cos(w_i (p - q)).
    gram = pe @ pe.T
    for offset in range(-n + 1, n):
        diagonal = torch.diagonal(gram, offset)
        assert_close(diagonal, diagonal[:1].expand_as(diagonal), f"offset {offset}", 1e-12)
    assert_close(torch.diagonal(gram), torch.full((n,), dim / 2, dtype=torch.float64), "norms", 1e-12)
    # Shifting by k is the same rotation for every position: PE[pos + k] = PE[pos] @ R_k.
    k = 5
    omega = 10000.0 ** (-2 * torch.arange(dim // 2, dtype=torch.float64) / dim)
    rotation = torch.zeros(dim, dim, dtype=torch.float64)
    for i, w in enumerate(omega.tolist()):
        c, s = math.cos(k * w), math.sin(k * w)
        # [sin(a + kw), cos(a + kw)] = [sin a, cos a] @ [[c, -s], [s, c]]
        rotation[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    assert_close(pe[:-k] @ rotation, pe[k:], "shift by a rotation", 1e-12)


@pytest.mark.parametrize("height,width,dim", [(3, 5, 8), (14, 14, 64), (1, 7, 12), (6, 1, 4)])
def test_sincos_2d_structure(height, width, dim):
    pe = sincos_position_embedding_2d(height, width, dim, dtype=torch.float64)
    assert pe.shape == (height * width, dim)
    grid = pe.view(height, width, dim)
    half = dim // 2
    rows_part, cols_part = grid[..., :half], grid[..., half:]
    # the row half depends only on the row, the column half only on the column
    assert torch.equal(rows_part, rows_part[:, :1].expand_as(rows_part))
    assert torch.equal(cols_part, cols_part[:1].expand_as(cols_part))
    # ... and each half is the 1-D embedding of that index with dim/2 dimensions
    assert_close(rows_part[:, 0], _closed_form_1d(height, half), "row half", 1e-12)
    assert_close(cols_part[0], _closed_form_1d(width, half), "column half", 1e-12)
    # the token at row-major index i*width + j has row i and column j
    i, j = height - 1, width // 2
    expected = torch.cat([_closed_form_1d(height, half)[i], _closed_form_1d(width, half)[j]])
    assert_close(pe[i * width + j], expected, "token (i, j)", 1e-12)
    # every position gets its own vector
    assert torch.cdist(pe, pe).add(torch.eye(height * width, dtype=pe.dtype)).min() > 1e-6


def test_sincos_2d_default_dtype_and_base():
    pe = sincos_position_embedding_2d(4, 4, 8)
    assert pe.dtype == torch.float32
    other_base = sincos_position_embedding_2d(4, 4, 8, base=100.0)
    assert not torch.allclose(pe, other_base)


@pytest.mark.parametrize("call,pattern", [
    (lambda: sincos_position_embedding_1d(10, 7), r"(?s)\bdim\b.*divisible by 2.*dim=7"),
    (lambda: sincos_position_embedding_1d(10, 0), r"\bdim\b"),
    (lambda: sincos_position_embedding_1d(0, 8), r"\bn\b"),
    (lambda: sincos_position_embedding_1d(10, 8, base=1.0), r"\bbase\b"),
    (lambda: sincos_position_embedding_1d(10, 8, base="big"), r"\bbase\b"),
    (lambda: sincos_position_embedding_2d(4, 4, 6), r"(?s)\bdim\b.*divisible by 4.*dim=6"),
    (lambda: sincos_position_embedding_2d(4, 4, 10), r"(?s)\bdim\b.*divisible by 4"),
    (lambda: sincos_position_embedding_2d(0, 4, 8), r"\bheight\b"),
    (lambda: sincos_position_embedding_2d(4, 2.5, 8), r"\bwidth\b"),
    (lambda: sincos_position_embedding_2d(4, 4, 8, base=0.5), r"\bbase\b"),
], ids=["1d-odd-dim", "1d-dim-0", "1d-n-0", "1d-base-1", "1d-base-str", "2d-dim-6", "2d-dim-10", "2d-height-0",
        "2d-width-float", "2d-base"])
def test_sincos_rejects_bad_arguments(call, pattern):
    with pytest.raises(ERRORS, match=pattern):
        call()


# ---------------------------------------------------------------------------------------------
# Learned position embedding
# ---------------------------------------------------------------------------------------------

def test_learned_position_embedding_shape_parameters_and_init():
    torch.manual_seed(0)
    emb = LearnedPositionEmbedding(197, 768)
    params = list(emb.parameters())
    assert len(params) == 1 and params[0] is emb.weight and emb.weight.requires_grad
    assert emb.weight.shape == (197, 768) and sum(p.numel() for p in params) == 197 * 768
    assert emb.weight.abs().max() <= 0.04  # truncated at two standard deviations
    assert 0.015 < emb.weight.std().item() < 0.02  # std of N(0, 0.02) truncated at +-2 std is ~0.0176
    torch.manual_seed(0)
    again = LearnedPositionEmbedding(197, 768)
    assert torch.equal(emb.weight, again.weight)
    assert "num_positions=197, dim=768" in repr(emb)


def test_learned_position_embedding_adds_one_vector_per_position():
    emb = LearnedPositionEmbedding(10, 4, dtype=DTYPE)
    x = _randn(3, 6, 4, seed=8).requires_grad_(True)
    out = emb(x)
    assert torch.equal(out, x + emb.weight[:6])
    assert torch.equal(emb(x[0]), x[0] + emb.weight[:6])  # unbatched
    out.sum().backward()
    expected = torch.zeros(10, 4, dtype=DTYPE)
    expected[:6] = 3.0  # each of the first 6 rows is used once per batch element
    assert torch.equal(emb.weight.grad, expected)
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("call,pattern", [
    (lambda: LearnedPositionEmbedding(0, 4), r"\bnum_positions\b"),
    (lambda: LearnedPositionEmbedding(4, -1), r"\bdim\b"),
    (lambda: LearnedPositionEmbedding(4, True), r"\bdim\b"),
    (lambda: LearnedPositionEmbedding(4, 8)(torch.zeros(1, 5, 8)), r"(?s)5 positions.*num_positions=4"),
    (lambda: LearnedPositionEmbedding(4, 8)(torch.zeros(1, 4, 6)), r"(?s)dim 6.*dim=8"),
    (lambda: LearnedPositionEmbedding(4, 8)(torch.zeros(8)), r"\bx\b.*3-D"),
], ids=["num_positions-0", "dim-negative", "dim-bool", "too-many-positions", "wrong-dim", "x-1d"])
def test_learned_position_embedding_rejects_bad_arguments(call, pattern):
    with pytest.raises(ERRORS, match=pattern):
        call()



def test_patch_embedding_step_reads_no_values_on_the_host():
    """PatchEmbed and the position embeddings run on the meta device (shapes, no values):
    their checks read only shapes, so nothing waits for a GPU at every step."""
    with torch.device("meta"):
        embed, position = PatchEmbed(16, 4, 3, 8), LearnedPositionEmbedding(16, 8)
        tokens = position(embed(torch.empty(2, 3, 16, 16)))
        grid = sequence_to_feature_map(tokens, 4, 4)
    assert tokens.shape == (2, 16, 8) and grid.shape == (2, 8, 4, 4)
    assert feature_map_to_sequence(grid).shape == (2, 16, 8)
    assert unpatchify(patchify(torch.empty(3, 16, 16, device="meta"), 4), 4, 16, 16).shape == (3, 16, 16)
