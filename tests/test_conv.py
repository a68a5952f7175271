"""Tests for ``mmgpt.conv``: everything is checked against PyTorch's own implementation.

* ``conv2d`` against ``F.conv2d``: forward and backward (x, weight, bias) over a few hundred
  seeded random configurations (batch/unbatched, groups incl. depthwise, non-square kernels,
  int/tuple stride, int/tuple/"same"/"valid" padding, dilation, with/without bias);
* ``padding="same"`` with even kernels and dilation (the extra row/column goes at the end);
* ``im2col`` against ``F.unfold`` (forward and backward);
* ``conv_output_size`` against the size of ``F.conv2d``'s output;
* ``Conv2d`` against ``nn.Conv2d``: initialisation under the same seed, state dicts both ways,
  forward/backward for every ``padding_mode``, ``bias=False``, ``extra_repr``;
* bad arguments raise ``ValueError``/``TypeError`` naming the argument.

Everything runs in float64 with tight tolerances, so an indexing mistake cannot hide in rounding.
"""
from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from helpers import as_pair, assert_close, fmt, leaf
from torch import nn

from mmgpt.conv import Conv2d, conv2d, conv_output_size, im2col

DTYPE = torch.float64
ATOL = 1e-10  # float64 round-off on these sizes is ~1e-14; an indexing bug is O(1)
ERRORS = (ValueError, TypeError)


# F.conv2d warns that it copies the input for padding="same" with even kernels; that is expected.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


# ---------------------------------------------------------------------------------------------
# Random configurations for conv2d
# ---------------------------------------------------------------------------------------------

def _draw_conv_configs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    configs = []
    for index in range(n):
        batch = rng.choice([None, 1, 2, 3])  # None: unbatched (C, H, W) input
        if rng.random() < 0.2:  # depthwise: one group per input channel
            c_in = rng.randint(2, 5)
            groups = c_in
            c_out = c_in * rng.randint(1, 2)
        else:
            groups = rng.choice([1, 1, 1, 2, 3])
            c_in = groups * rng.randint(1, 3)
            c_out = groups * rng.randint(1, 3)
        kh, kw = rng.randint(1, 5), rng.randint(1, 5)
        if rng.random() < 0.4:
            stride = 1
        elif rng.random() < 0.5:
            stride = rng.randint(1, 3)
        else:
            stride = (rng.randint(1, 3), rng.randint(1, 3))
        dilation = rng.randint(1, 3) if rng.random() < 0.6 else (rng.randint(1, 3), rng.randint(1, 3))
        kinds = ["int", "tuple", "valid"] + (["same", "same"] if as_pair(stride) == (1, 1) else [])
        kind = rng.choice(kinds)
        if kind == "int":
            padding = rng.randint(0, 3)
        elif kind == "tuple":
            padding = (rng.randint(0, 3), rng.randint(0, 3))
        else:
            padding = kind
        ph, pw = as_pair(padding) if not isinstance(padding, str) else (0, 0)
        dh, dw = as_pair(dilation)
        span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        # Smallest size that still gives a non-empty output ("same" pads so anything >= 1 works).
        min_h = 1 if padding == "same" else max(1, span_h - 2 * ph)
        min_w = 1 if padding == "same" else max(1, span_w - 2 * pw)
        height, width = rng.randint(min_h, min_h + 7), rng.randint(min_w, min_w + 7)
        configs.append(dict(
            index=index, batch=batch, c_in=c_in, c_out=c_out, groups=groups, kernel=(kh, kw),
            stride=stride, padding=padding, dilation=dilation, size=(height, width),
            bias=rng.random() < 0.7,
        ))
    return configs


def _conv_id(cfg: dict) -> str:
    return (f"{cfg['index']}-b{cfg['batch'] if cfg['batch'] is not None else 'none'}"
            f"-c{cfg['c_in']}to{cfg['c_out']}-g{cfg['groups']}-k{fmt(cfg['kernel'])}"
            f"-s{fmt(cfg['stride'])}-p{fmt(cfg['padding'])}-d{fmt(cfg['dilation'])}"
            f"-in{fmt(cfg['size'])}-{'bias' if cfg['bias'] else 'nobias'}")


CONV_CONFIGS = _draw_conv_configs(240, seed=20240611)


def _make_tensors(cfg: dict, seed: int, dtype=DTYPE):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg["size"]
    x_shape = (cfg["c_in"], h, w) if cfg["batch"] is None else (cfg["batch"], cfg["c_in"], h, w)
    x = torch.randn(x_shape, generator=g, dtype=dtype)
    weight = torch.randn(cfg["c_out"], cfg["c_in"] // cfg["groups"], *cfg["kernel"], generator=g, dtype=dtype)
    bias = torch.randn(cfg["c_out"], generator=g, dtype=dtype) if cfg["bias"] else None
    return g, x, weight, bias


def _compare_conv2d(cfg: dict, x, weight, bias, g, atol=ATOL) -> None:
    kwargs = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    ours_in = [leaf(x), leaf(weight), leaf(bias)]
    ref_in = [leaf(x), leaf(weight), leaf(bias)]
    out = conv2d(ours_in[0], ours_in[1], ours_in[2], **kwargs)
    ref = F.conv2d(ref_in[0], ref_in[1], ref_in[2], **kwargs)
    assert_close(out, ref, "output", atol)

    upstream = torch.randn(ref.shape, generator=g, dtype=ref.dtype)
    out.backward(upstream)
    ref.backward(upstream)
    for name, ours_t, ref_t in zip(("x.grad", "weight.grad", "bias.grad"), ours_in, ref_in):
        if ref_t is not None:
            assert_close(ours_t.grad, ref_t.grad, name, atol)


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=_conv_id)
def test_conv2d_matches_torch_forward_and_backward(cfg):
    g, x, weight, bias = _make_tensors(cfg, seed=1000 + cfg["index"])
    _compare_conv2d(cfg, x, weight, bias, g)


def test_random_configs_cover_every_feature():
    """The random draw above must actually exercise each feature it claims to."""
    def any_(pred):
        return any(pred(c) for c in CONV_CONFIGS)

    def pair(c, key):
        return as_pair(c[key])

    checks = {
        "unbatched 3-D input": any_(lambda c: c["batch"] is None),
        "batch 1": any_(lambda c: c["batch"] == 1),
        "batch 3": any_(lambda c: c["batch"] == 3),
        "depthwise": any_(lambda c: c["groups"] == c["c_in"] > 1 and c["c_out"] > c["c_in"]),
        "groups, not depthwise": any_(lambda c: 1 < c["groups"] < c["c_in"]),
        "groups with c_in != c_out": any_(lambda c: c["groups"] > 1 and c["c_in"] != c["c_out"]),
        "non-square kernel": any_(lambda c: c["kernel"][0] != c["kernel"][1]),
        "kernel 1x1": any_(lambda c: c["kernel"] == (1, 1)),
        "kernel size 5": any_(lambda c: 5 in c["kernel"]),
        "int stride 2": any_(lambda c: c["stride"] == 2),
        "int stride 3": any_(lambda c: c["stride"] == 3),
        "tuple stride, unequal": any_(lambda c: isinstance(c["stride"], tuple) and len(set(c["stride"])) == 2),
        "int padding > 0": any_(lambda c: isinstance(c["padding"], int) and c["padding"] > 0),
        "tuple padding, unequal": any_(lambda c: isinstance(c["padding"], tuple) and len(set(c["padding"])) == 2),
        "padding same": any_(lambda c: c["padding"] == "same"),
        "padding valid": any_(lambda c: c["padding"] == "valid"),
        "same + even kernel": any_(lambda c: c["padding"] == "same" and any(k % 2 == 0 for k in c["kernel"])),
        "same + dilation": any_(lambda c: c["padding"] == "same" and max(pair(c, "dilation")) > 1),
        "int dilation 3": any_(lambda c: c["dilation"] == 3),
        "tuple dilation, unequal": any_(lambda c: isinstance(c["dilation"], tuple) and len(set(c["dilation"])) == 2),
        "stride > 1 and dilation > 1": any_(lambda c: max(pair(c, "stride")) > 1 and max(pair(c, "dilation")) > 1),
        "stride larger than the kernel span": any_(
            lambda c: pair(c, "stride")[0] > pair(c, "dilation")[0] * (c["kernel"][0] - 1) + 1),
        "no bias": any_(lambda c: not c["bias"]),
        "bias": any_(lambda c: c["bias"]),
        "non-square input": any_(lambda c: c["size"][0] != c["size"][1]),
        "input exactly the kernel span (one output row)": any_(
            lambda c: c["padding"] in (0, "valid")
            and c["size"][0] == pair(c, "dilation")[0] * (c["kernel"][0] - 1) + 1),
    }
    missing = [name for name, ok in checks.items() if not ok]
    assert not missing, f"the random configurations never exercise: {missing}"


@pytest.mark.parametrize("cfg", CONV_CONFIGS[:24], ids=_conv_id)
def test_conv2d_matches_torch_in_float32(cfg):
    """No silent promotion: float32 in, float32 out, still equal to F.conv2d."""
    g, x, weight, bias = _make_tensors(cfg, seed=5000 + cfg["index"], dtype=torch.float32)
    _compare_conv2d(cfg, x, weight, bias, g, atol=1e-4)


@pytest.mark.parametrize("layout", ["channels_last", "transposed_hw", "sliced"])
def test_conv2d_non_contiguous_inputs(layout):
    g = torch.Generator().manual_seed(7)
    if layout == "channels_last":
        x = torch.randn(2, 9, 8, 4, generator=g, dtype=DTYPE).permute(0, 3, 1, 2)
        weight = torch.randn(6, 3, 2, 3, 2, generator=g, dtype=DTYPE)[..., 0]  # (6, 2, 3, ...) sliced
        weight = weight[:, :2]
        groups = 2
    elif layout == "transposed_hw":
        x = torch.randn(2, 4, 8, 9, generator=g, dtype=DTYPE).transpose(2, 3)
        weight = torch.randn(6, 4, 3, 2, generator=g, dtype=DTYPE).transpose(2, 3)
        groups = 1
    else:
        x = torch.randn(2, 8, 11, 12, generator=g, dtype=DTYPE)[:, ::2, 1:, ::2]
        weight = torch.randn(4, 4, 6, 3, generator=g, dtype=DTYPE)[:, :, ::2]
        groups = 1
    assert not x.is_contiguous() and not weight.is_contiguous()
    bias = torch.randn(weight.shape[0], generator=g, dtype=DTYPE)
    cfg = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=groups)
    _compare_conv2d(cfg, x, weight, bias, g)


def test_conv2d_empty_batch():
    x = torch.zeros(0, 4, 7, 6, dtype=DTYPE)
    weight = torch.randn(6, 2, 3, 2, dtype=DTYPE)
    out = conv2d(x, weight, torch.zeros(6, dtype=DTYPE), stride=2, padding=1, groups=2)
    assert out.shape == F.conv2d(x, weight, stride=2, padding=1, groups=2).shape == (0, 6, 4, 4)


def test_conv2d_known_values():
    """A hand-checkable case: cross-correlation (no flip), zero padding, stride, bias."""
    x = torch.arange(16, dtype=DTYPE).reshape(1, 1, 4, 4)
    weight = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]], dtype=DTYPE)
    out = conv2d(x, weight, torch.tensor([10.0], dtype=DTYPE), stride=2)
    # window at (0,0): [[0,1],[4,5]] -> 0 + 2 - 5 = -3; (0,2): [[2,3],[6,7]] -> 2 + 6 - 7 = 1
    # window at (2,0): [[8,9],[12,13]] -> 8 + 18 - 13 = 13; (2,2): [[10,11],[14,15]] -> 10 + 22 - 15 = 17
    expected = torch.tensor([[[[-3.0, 1.0], [13.0, 17.0]]]], dtype=DTYPE) + 10
    assert torch.equal(out, expected)


# ---------------------------------------------------------------------------------------------
# padding="same" with even kernels and dilation
# ---------------------------------------------------------------------------------------------

SAME_CASES = [
    (kernel, dilation, size)
    for kernel in [(2, 2), (4, 4), (2, 4), (4, 1), (3, 2), (1, 2), (5, 4)]
    for dilation in [1, 2, 3, (2, 3), (3, 1)]
    for size in [(7, 7), (6, 9)]
]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("case", list(enumerate(SAME_CASES)),
                         ids=[f"k{fmt(k)}-d{fmt(d)}-in{fmt(s)}" for k, d, s in SAME_CASES])
def test_padding_same_even_kernels_and_dilation(case, batched):
    index, (kernel, dilation, size) = case
    cfg = dict(index=index, batch=2 if batched else None, c_in=2, c_out=3, groups=1, kernel=kernel,
               stride=1, padding="same", dilation=dilation, size=size, bias=True)
    g, x, weight, bias = _make_tensors(cfg, seed=9000 + 2 * index + batched)
    out = conv2d(x, weight, bias, padding="same", dilation=dilation)
    assert out.shape[-2:] == x.shape[-2:]
    _compare_conv2d(cfg, x, weight, bias, g)


def test_padding_same_puts_the_extra_row_and_column_at_the_end():
    """A 2x2 kernel that picks the top-left tap: output[i, j] = x[i, j], so no shift at all.

    (Padding the extra row/column at the start would shift the image down and right by one.)
    """
    x = torch.arange(1.0, 13.0, dtype=DTYPE).reshape(1, 1, 3, 4)
    weight = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], dtype=DTYPE)
    assert torch.equal(conv2d(x, weight, padding="same"), x)
    # ...and the bottom-right tap sees the zero padding on the last row and column.
    weight = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]], dtype=DTYPE)
    expected = torch.zeros_like(x)
    expected[..., :-1, :-1] = x[..., 1:, 1:]
    assert torch.equal(conv2d(x, weight, padding="same"), expected)


def test_padding_valid_equals_zero_padding():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 7, generator=g, dtype=DTYPE)
    weight = torch.randn(4, 3, 3, 2, generator=g, dtype=DTYPE)
    assert torch.equal(conv2d(x, weight, padding="valid"), conv2d(x, weight, padding=0))
    assert conv2d(x, weight, padding="valid").shape == (2, 4, 6, 6)


# ---------------------------------------------------------------------------------------------
# im2col == F.unfold
# ---------------------------------------------------------------------------------------------

def _draw_unfold_configs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def int_or_pair(lo, hi):
        return rng.randint(lo, hi) if rng.random() < 0.5 else (rng.randint(lo, hi), rng.randint(lo, hi))

    configs = []
    for index in range(n):
        kernel, dilation, padding, stride = int_or_pair(1, 4), int_or_pair(1, 3), int_or_pair(0, 2), int_or_pair(1, 3)
        (kh, kw), (dh, dw), (ph, pw) = as_pair(kernel), as_pair(dilation), as_pair(padding)
        min_h, min_w = max(1, dh * (kh - 1) + 1 - 2 * ph), max(1, dw * (kw - 1) + 1 - 2 * pw)
        configs.append(dict(index=index, batch=rng.randint(1, 3), channels=rng.randint(1, 4),
                            size=(rng.randint(min_h, min_h + 6), rng.randint(min_w, min_w + 6)),
                            kernel=kernel, dilation=dilation, padding=padding, stride=stride))
    return configs


UNFOLD_CONFIGS = _draw_unfold_configs(100, seed=77)


def _unfold_id(c: dict) -> str:
    return (f"{c['index']}-b{c['batch']}-c{c['channels']}-in{fmt(c['size'])}-k{fmt(c['kernel'])}"
            f"-d{fmt(c['dilation'])}-p{fmt(c['padding'])}-s{fmt(c['stride'])}")


@pytest.mark.parametrize("cfg", UNFOLD_CONFIGS, ids=_unfold_id)
def test_im2col_matches_unfold(cfg):
    g = torch.Generator().manual_seed(cfg["index"])
    x = torch.randn(cfg["batch"], cfg["channels"], *cfg["size"], generator=g, dtype=DTYPE)
    args = (cfg["kernel"], cfg["dilation"], cfg["padding"], cfg["stride"])
    ours_x, ref_x = leaf(x), leaf(x)
    cols, ref = im2col(ours_x, *args), F.unfold(ref_x, *args)
    assert cols.shape == ref.shape
    assert torch.equal(cols, ref)  # a pure gather: exactly equal
    # keyword names follow F.unfold too
    kw = dict(kernel_size=cfg["kernel"], dilation=cfg["dilation"], padding=cfg["padding"], stride=cfg["stride"])
    assert torch.equal(im2col(x, **kw), F.unfold(x, **kw))
    assert torch.equal(im2col(x[0], **kw), F.unfold(x[0], **kw))  # unbatched (C, H, W), as F.unfold allows

    upstream = torch.randn(ref.shape, generator=g, dtype=DTYPE)
    cols.backward(upstream)
    ref.backward(upstream)
    assert_close(ours_x.grad, ref_x.grad, "x.grad", ATOL)


def test_unfold_configs_cover_every_feature():
    def any_(pred):
        return any(pred(c) for c in UNFOLD_CONFIGS)

    for key in ("kernel", "dilation", "padding", "stride"):
        assert any_(lambda c: isinstance(c[key], tuple) and len(set(c[key])) == 2), key
        assert any_(lambda c: isinstance(c[key], int) and c[key] > (0 if key == "padding" else 1)), key


# ---------------------------------------------------------------------------------------------
# conv_output_size
# ---------------------------------------------------------------------------------------------

def _draw_size_cases(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    return [(rng.randint(1, 20), rng.randint(1, 5), rng.randint(1, 4), rng.randint(0, 3), rng.randint(1, 3))
            for _ in range(n)]


SIZE_CASES = _draw_size_cases(200, seed=5)


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", SIZE_CASES,
                         ids=[f"n{n}-k{k}-s{s}-p{p}-d{d}" for n, k, s, p, d in SIZE_CASES])
def test_conv_output_size_matches_torch(size, kernel, stride, padding, dilation):
    expected_formula = conv_output_size(size, kernel, stride, padding, dilation)
    # The axis under test is the height; the width is kept trivially valid (size 1, kernel 1).
    x = torch.zeros(1, 1, size, 1, dtype=DTYPE)
    weight = torch.zeros(1, 1, kernel, 1, dtype=DTYPE)
    kwargs = dict(stride=(stride, 1), padding=(padding, 0), dilation=(dilation, 1))
    if expected_formula >= 1:
        assert F.conv2d(x, weight, **kwargs).shape[2] == expected_formula
        assert conv2d(x, weight, **kwargs).shape[2] == expected_formula
        # the width axis, through the keyword names
        xt, wt = x.transpose(2, 3), weight.transpose(2, 3)
        kwt = dict(stride=(1, stride), padding=(0, padding), dilation=(1, dilation))
        assert conv2d(xt, wt, **kwt).shape[3] == F.conv2d(xt, wt, **kwt).shape[3] == conv_output_size(
            size=size, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    else:
        with pytest.raises(RuntimeError):
            F.conv2d(x, weight, **kwargs)
        with pytest.raises(ValueError, match="empty"):
            conv2d(x, weight, **kwargs)


def test_size_cases_include_empty_outputs():
    results = [conv_output_size(*case) for case in SIZE_CASES]
    assert any(r < 1 for r in results) and sum(r >= 1 for r in results) > 100


def test_conv_output_size_known_values():
    assert conv_output_size(224, 7, 2, 3) == 112  # ResNet stem
    assert conv_output_size(32, 3, 1, 1) == 32
    assert conv_output_size(32, 3) == 30
    assert conv_output_size(224, 16, 16) == 14  # ViT patchify
    assert conv_output_size(10, 3, dilation=2) == 6
    assert conv_output_size(2, 5) == -2  # returned as is, not clamped


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(size=-1, kernel_size=3), ValueError, "size"),
    (dict(size=8, kernel_size=0), ValueError, "kernel_size"),
    (dict(size=8, kernel_size=3, stride=0), ValueError, "stride"),
    (dict(size=8, kernel_size=3, padding=-1), ValueError, "padding"),
    (dict(size=8, kernel_size=3, dilation=0), ValueError, "dilation"),
    (dict(size=8.0, kernel_size=3), TypeError, "size"),
    (dict(size=8, kernel_size=True), TypeError, "kernel_size"),
    (dict(size=8, kernel_size=3, stride=(1, 1)), TypeError, "stride"),
], ids=["size-neg", "kernel-0", "stride-0", "padding-neg", "dilation-0", "size-float", "kernel-bool",
        "stride-tuple"])
def test_conv_output_size_rejects_bad_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=rf"\b{name}\b"):
        conv_output_size(**kwargs)


# ---------------------------------------------------------------------------------------------
# Conv2d == nn.Conv2d
# ---------------------------------------------------------------------------------------------

INIT_CASES = [
    dict(in_channels=3, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 5), groups=2),
    dict(in_channels=6, out_channels=12, kernel_size=3, groups=6),  # depthwise
    dict(in_channels=1, out_channels=1, kernel_size=1),
    dict(in_channels=5, out_channels=10, kernel_size=(4, 1), bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding="same", dilation=2, padding_mode="reflect"),
    dict(in_channels=16, out_channels=32, kernel_size=7, stride=2, padding=3),
]


def _init_id(kwargs: dict) -> str:
    return "-".join(f"{k}={fmt(v)}" for k, v in kwargs.items())


@pytest.mark.parametrize("kwargs", INIT_CASES, ids=_init_id)
def test_Conv2d_initialisation_matches_nn_Conv2d(kwargs):
    torch.manual_seed(1234)
    ours = Conv2d(**kwargs)
    after_ours = torch.rand(4)  # the RNG must also be left in the same state
    torch.manual_seed(1234)
    ref = nn.Conv2d(**kwargs)
    after_ref = torch.rand(4)
    assert torch.equal(ours.weight, ref.weight)
    assert ours.weight.abs().sum() > 0
    if ref.bias is None:
        assert ours.bias is None
    else:
        assert torch.equal(ours.bias, ref.bias)
    assert torch.equal(after_ours, after_ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert all(p.requires_grad for p in ours.parameters())
    # a different seed gives different weights (the comparison above is not vacuous)
    torch.manual_seed(4321)
    assert not torch.equal(Conv2d(**kwargs).weight, ours.weight)
    # reset_parameters re-draws like nn.Conv2d's
    torch.manual_seed(99)
    ours.reset_parameters()
    torch.manual_seed(99)
    ref.reset_parameters()
    assert torch.equal(ours.weight, ref.weight)
    if ref.bias is not None:
        assert torch.equal(ours.bias, ref.bias)


@pytest.mark.parametrize("kwargs", INIT_CASES, ids=_init_id)
def test_Conv2d_state_dicts_load_into_each_other(kwargs):
    torch.manual_seed(0)
    ours = Conv2d(**kwargs, dtype=DTYPE)
    torch.manual_seed(1)
    ref = nn.Conv2d(**kwargs, dtype=DTYPE)
    assert not torch.equal(ours.weight, ref.weight)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert all(ours_sd[k].shape == ref_sd[k].shape and ours_sd[k].dtype == ref_sd[k].dtype for k in ref_sd)

    ref.load_state_dict(copy.deepcopy(ours_sd))  # strict: same keys and shapes
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), name

    torch.manual_seed(2)
    other = nn.Conv2d(**kwargs, dtype=DTYPE)
    ours.load_state_dict(other.state_dict())
    for (name, p), (_, q) in zip(ours.named_parameters(), other.named_parameters()):
        assert torch.equal(p, q), name
    x = torch.randn(2, kwargs["in_channels"], 9, 10, dtype=DTYPE)
    assert_close(ours(x), other(x), "output after load_state_dict", ATOL)


MODULE_CASES = [
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, batch=2, size=(8, 9)),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), padding=(2, 1), stride=(2, 1), groups=2,
         batch=1, size=(9, 8)),
    dict(in_channels=2, out_channels=3, kernel_size=(4, 2), padding="same", dilation=(2, 3), batch=2,
         size=(10, 11)),
    dict(in_channels=3, out_channels=3, kernel_size=2, padding="same", groups=3, bias=False, batch=None,
         size=(7, 8)),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding="valid", stride=2, batch=3, size=(9, 9)),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 5), padding=(3, 0), dilation=2, stride=(1, 3),
         groups=4, batch=None, size=(8, 12)),
    dict(in_channels=1, out_channels=2, kernel_size=(1, 4), padding=(0, 3), stride=3, bias=False, batch=2,
         size=(6, 7)),
]
MODULE_PARAMS = [(mode, case) for mode in ("zeros", "reflect", "replicate", "circular") for case in MODULE_CASES]


def _module_id(param) -> str:
    mode, case = param
    return mode + "-" + "-".join(f"{k}={fmt(v)}" for k, v in case.items())


@pytest.mark.parametrize("mode,case", MODULE_PARAMS, ids=[_module_id(p) for p in MODULE_PARAMS])
def test_Conv2d_forward_backward_matches_nn_Conv2d(mode, case):
    seed = MODULE_PARAMS.index((mode, case))
    case = dict(case)
    batch, size = case.pop("batch"), case.pop("size")
    ref = nn.Conv2d(**case, padding_mode=mode, dtype=DTYPE)
    ours = Conv2d(**case, padding_mode=mode, dtype=DTYPE)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(seed)
    shape = (case["in_channels"], *size) if batch is None else (batch, case["in_channels"], *size)
    x = torch.randn(shape, generator=g, dtype=DTYPE)
    if ref.bias is not None:  # make the bias large enough that getting it wrong shows
        with torch.no_grad():
            ref.bias.normal_(generator=g)
            ours.bias.copy_(ref.bias)
    ours_x, ref_x = leaf(x), leaf(x)
    out, expected = ours(ours_x), ref(ref_x)
    assert_close(out, expected, "output", ATOL)
    upstream = torch.randn(expected.shape, generator=g, dtype=DTYPE)
    out.backward(upstream)
    expected.backward(upstream)
    assert_close(ours_x.grad, ref_x.grad, "x.grad", ATOL)
    assert_close(ours.weight.grad, ref.weight.grad, "weight.grad", ATOL)
    if ref.bias is not None:
        assert_close(ours.bias.grad, ref.bias.grad, "bias.grad", ATOL)


def test_padding_modes_differ_from_each_other():
    """The padding_mode really is used: the four modes give four different outputs."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 7, dtype=DTYPE)
    outputs = {}
    for mode in ("zeros", "reflect", "replicate", "circular"):
        torch.manual_seed(1)
        outputs[mode] = Conv2d(2, 3, 3, padding=(1, 2), padding_mode=mode, dtype=DTYPE)(x)
    for a, b in itertools.combinations(outputs, 2):
        assert not torch.allclose(outputs[a], outputs[b]), (a, b)


def test_Conv2d_without_bias():
    torch.manual_seed(5)
    ours = Conv2d(3, 4, (3, 2), bias=False)
    torch.manual_seed(5)
    ref = nn.Conv2d(3, 4, (3, 2), bias=False)
    assert ours.bias is None
    assert list(ours.state_dict()) == ["weight"] == list(ref.state_dict())
    assert len(list(ours.parameters())) == 1
    x = torch.randn(2, 3, 6, 5)
    assert_close(ours(x), ref(x), "output", 1e-5)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    with pytest.raises(RuntimeError):  # a state dict with a bias does not fit a bias-free layer
        ours.load_state_dict(nn.Conv2d(3, 4, (3, 2)).state_dict())
    assert "bias=False" in repr(ours)
    assert "bias" not in repr(Conv2d(3, 4, 3))


def test_Conv2d_factory_kwargs_and_attributes():
    m = Conv2d(4, 6, 3, stride=(2, 1), padding=1, dilation=2, groups=2, dtype=DTYPE, device="cpu")
    assert m.weight.dtype == DTYPE and m.bias.dtype == DTYPE
    assert m.weight.shape == (6, 2, 3, 3) and m.bias.shape == (6,)
    assert (m.in_channels, m.out_channels, m.groups) == (4, 6, 2)
    assert m.kernel_size == (3, 3) and m.stride == (2, 1) and m.padding == (1, 1) and m.dilation == (2, 2)
    assert Conv2d(4, 6, 3).weight.dtype == torch.get_default_dtype()
    assert Conv2d(2, 2, (1, 4), padding="same").padding == "same"


@pytest.mark.parametrize("args,kwargs,expected", [
    ((3, 8, 3), {}, "kernel_size=(3, 3)"),
    ((3, 8, (2, 5)), {}, "kernel_size=(2, 5)"),
    ((4, 8, (5, 1)), dict(groups=2, padding="same"), "kernel_size=(5, 1)"),
], ids=["int", "pair", "grouped-same"])
def test_Conv2d_extra_repr_mentions_the_kernel_size(args, kwargs, expected):
    m = Conv2d(*args, **kwargs)
    assert expected in m.extra_repr()
    assert expected in repr(m)
    assert m.extra_repr().startswith(f"{args[0]}, {args[1]}")


def test_Conv2d_extra_repr_mentions_non_default_settings():
    r = Conv2d(4, 8, 3, stride=2, padding=1, dilation=2, groups=4, bias=False, padding_mode="reflect").extra_repr()
    for text in ("stride=(2, 2)", "padding=(1, 1)", "dilation=(2, 2)", "groups=4", "bias=False", "reflect"):
        assert text in r, text
    plain = Conv2d(4, 8, 3).extra_repr()
    for text in ("padding", "dilation", "groups", "bias", "padding_mode"):
        assert text not in plain, text


# ---------------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------------

def _base_call() -> dict:
    g = torch.Generator().manual_seed(11)
    return dict(x=torch.randn(2, 4, 6, 6, generator=g, dtype=DTYPE),
                weight=torch.randn(6, 2, 3, 3, generator=g, dtype=DTYPE),
                bias=torch.randn(6, generator=g, dtype=DTYPE),
                stride=1, padding=0, dilation=1, groups=2)


def test_base_call_for_error_cases_is_valid():
    """Each error case below changes exactly one thing in this valid call."""
    call = _base_call()
    ref = F.conv2d(call["x"], call["weight"], call["bias"], 1, 0, 1, 2)
    assert_close(conv2d(**call), ref, "output", ATOL)


def _randn(*shape, dtype=DTYPE):
    return torch.randn(*shape, dtype=dtype)


CONV2D_ERRORS = [
    # id, overrides, regex the message must match
    ("x-2d", dict(x=_randn(6, 6)), r"\bx\b.*4-D"),
    ("x-5d", dict(x=_randn(1, 2, 4, 6, 6)), r"\bx\b.*4-D"),
    ("x-not-a-tensor", dict(x=[[1.0]]), r"\bx\b"),
    ("weight-3d", dict(weight=_randn(6, 2, 3)), r"\bweight\b.*4-D"),
    ("weight-5d", dict(weight=_randn(6, 2, 3, 3, 1)), r"\bweight\b.*4-D"),
    ("channel-mismatch", dict(x=_randn(2, 6, 6, 6)), r"channels"),
    ("channel-mismatch-groups-1", dict(groups=1), r"channels"),
    ("groups-not-dividing-in", dict(x=_randn(2, 3, 6, 6), weight=_randn(6, 1, 3, 3)), r"(?s)groups.*divide"),
    ("groups-not-dividing-out", dict(weight=_randn(5, 2, 3, 3), bias=_randn(5)), r"(?s)groups.*divide"),
    ("groups-0", dict(groups=0), r"\bgroups\b"),
    ("groups-negative", dict(groups=-2), r"\bgroups\b"),
    ("groups-float", dict(groups=2.0), r"\bgroups\b"),
    ("bias-wrong-length", dict(bias=_randn(5)), r"\bbias\b"),
    ("bias-2d", dict(bias=_randn(6, 1)), r"\bbias\b"),
    ("bias-not-a-tensor", dict(bias=[0.0] * 6), r"\bbias\b"),
    ("padding-negative", dict(padding=-1), r"\bpadding\b"),
    ("padding-pair-negative", dict(padding=(0, -2)), r"\bpadding\b"),
    ("padding-3-tuple", dict(padding=(1, 1, 1)), r"\bpadding\b"),
    ("padding-float", dict(padding=1.0), r"\bpadding\b"),
    ("padding-unknown-string", dict(padding="full"), r"\bpadding\b"),
    ("stride-0", dict(stride=0), r"\bstride\b"),
    ("stride-pair-0", dict(stride=(1, 0)), r"\bstride\b"),
    ("stride-negative", dict(stride=-1), r"\bstride\b"),
    ("stride-3-tuple", dict(stride=(1, 1, 1)), r"\bstride\b"),
    ("stride-bool", dict(stride=True), r"\bstride\b"),
    ("dilation-0", dict(dilation=0), r"\bdilation\b"),
    ("dilation-pair-0", dict(dilation=(2, 0)), r"\bdilation\b"),
    ("dilation-3-tuple", dict(dilation=(1, 1, 1)), r"\bdilation\b"),
    ("same-with-stride-2", dict(padding="same", stride=2), r"(?s)same.*stride"),
    ("same-with-stride-1x2", dict(padding="same", stride=(1, 2)), r"(?s)same.*stride"),
    ("empty-output-kernel-too-big", dict(x=_randn(2, 4, 2, 6)), r"empty"),
    ("empty-output-dilation", dict(dilation=(1, 3)), r"empty"),
    ("empty-output-valid", dict(x=_randn(2, 4, 6, 2), padding="valid"), r"empty"),
    ("dtype-x-vs-weight", dict(x=_randn(2, 4, 6, 6, dtype=torch.float32)), r"dtype"),
    ("dtype-bias", dict(bias=_randn(6, dtype=torch.float32)), r"dtype"),
]


# Calls F.conv2d accepts (a 2-D x is read as one unbatched channel) or converts (floats,
# bools, a list bias) where conv2d asks for what its signature says.
_TORCH_LENIENT = {"x-2d", "groups-float", "bias-not-a-tensor", "padding-float", "stride-bool"}


@pytest.mark.parametrize("name,overrides,pattern", CONV2D_ERRORS, ids=[c[0] for c in CONV2D_ERRORS])
def test_conv2d_rejects_bad_arguments(name, overrides, pattern):
    """A message that names the problem, for a call F.conv2d refuses as well: conv2d keeps
    F.conv2d's contract and refuses no call it accepts, apart from the lenient ones above."""
    call = _base_call()
    call.update(overrides)
    with pytest.raises(ERRORS, match=pattern):
        conv2d(**call)
    if name not in _TORCH_LENIENT:
        with pytest.raises(Exception):
            F.conv2d(call["x"], call["weight"], call["bias"], call["stride"], call["padding"],
                     call["dilation"], call["groups"])


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(x=_randn(6, 6), kernel_size=2), r"\bx\b.*4-D"),
    (dict(x=_randn(1, 1, 3, 6, 6), kernel_size=2), r"\bx\b.*4-D"),
    (dict(x=_randn(1, 3, 6, 6), kernel_size=0), r"\bkernel_size\b"),
    (dict(x=_randn(1, 3, 6, 6), kernel_size=(2, 2, 2)), r"\bkernel_size\b"),
    (dict(x=_randn(1, 3, 6, 6), kernel_size=True), r"\bkernel_size\b"),
    (dict(x=_randn(1, 3, 6, 6), kernel_size=2, stride=0), r"\bstride\b"),
    (dict(x=_randn(1, 3, 6, 6), kernel_size=2, dilation=0), r"\bdilation\b"),
    (dict(x=_randn(1, 3, 6, 6), kernel_size=2, padding=-1), r"\bpadding\b"),
    (dict(x=_randn(1, 3, 6, 6), kernel_size=(7, 2)), r"kernel"),
    (dict(x=_randn(1, 3, 6, 6), kernel_size=3, dilation=(1, 3)), r"kernel"),
], ids=["x-2d", "x-5d", "kernel-0", "kernel-3-tuple", "kernel-bool", "stride-0", "dilation-0", "padding-neg",
        "kernel-too-big", "dilated-span-too-big"])
def test_im2col_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ERRORS, match=pattern):
        im2col(**kwargs)


CONV2D_MODULE_ERRORS = [
    ("in_channels-0", dict(in_channels=0), r"\bin_channels\b"),
    ("in_channels-bool", dict(in_channels=True), r"\bin_channels\b"),
    ("out_channels-0", dict(out_channels=0), r"\bout_channels\b"),
    ("out_channels-float", dict(out_channels=6.0), r"\bout_channels\b"),
    ("groups-0", dict(groups=0), r"\bgroups\b"),
    ("groups-not-dividing-in", dict(in_channels=5), r"(?s)groups.*in_channels"),
    ("groups-not-dividing-out", dict(out_channels=5), r"(?s)groups.*out_channels"),
    ("kernel_size-0", dict(kernel_size=0), r"\bkernel_size\b"),
    ("kernel_size-3-tuple", dict(kernel_size=(3, 3, 3)), r"\bkernel_size\b"),
    ("stride-0", dict(stride=0), r"\bstride\b"),
    ("stride-3-tuple", dict(stride=(1, 1, 1)), r"\bstride\b"),
    ("stride-bool", dict(stride=True), r"\bstride\b"),
    ("kernel_size-bool", dict(kernel_size=True), r"\bkernel_size\b"),
    ("dilation-0", dict(dilation=0), r"\bdilation\b"),
    ("dilation-3-tuple", dict(dilation=(1, 2, 1)), r"\bdilation\b"),
    ("padding-negative", dict(padding=-1), r"\bpadding\b"),
    ("padding-pair-negative", dict(padding=(1, -1)), r"\bpadding\b"),
    ("padding-unknown-string", dict(padding="full"), r"\bpadding\b"),
    ("same-with-stride-2", dict(padding="same", stride=2), r"(?s)same.*stride"),
    ("same-with-stride-2x1", dict(padding="same", stride=(2, 1)), r"(?s)same.*stride"),
    ("padding_mode-unknown", dict(padding_mode="mirror"), r"\bpadding_mode\b"),
]
_MODULE_BASE = dict(in_channels=6, out_channels=4, kernel_size=3, stride=1, padding=0, dilation=1, groups=2)


@pytest.mark.parametrize("overrides,pattern", [c[1:] for c in CONV2D_MODULE_ERRORS],
                         ids=[c[0] for c in CONV2D_MODULE_ERRORS])
def test_Conv2d_constructor_rejects_bad_arguments(overrides, pattern):
    Conv2d(**_MODULE_BASE)  # the base is valid
    with pytest.raises(ERRORS, match=pattern):
        Conv2d(**{**_MODULE_BASE, **overrides})


def test_Conv2d_forward_rejects_wrong_input():
    m = Conv2d(4, 6, 3, groups=2)
    m(torch.randn(1, 4, 5, 5))
    with pytest.raises(ERRORS, match="channels"):
        m(torch.randn(1, 3, 5, 5))
    with pytest.raises(ERRORS, match=r"\bx\b.*4-D"):
        m(torch.randn(4, 5))
    with pytest.raises(ERRORS, match="empty"):
        m(torch.randn(1, 4, 2, 5))
    with pytest.raises(ERRORS, match="dtype"):
        m(torch.randn(1, 4, 5, 5, dtype=DTYPE))



def test_conv_reads_no_values_on_the_host():
    """conv2d and Conv2d run on the meta device (shapes, no values): their checks read only
    shapes and dtypes, so nothing waits for a GPU at every step."""
    x = torch.empty(2, 4, 6, 6, device="meta")
    w, b = torch.empty(6, 2, 3, 3, device="meta"), torch.empty(6, device="meta")
    assert conv2d(x, w, b, padding="same", groups=2).shape == (2, 6, 6, 6)
    assert conv2d(x[0], w, b, stride=(2, 1), dilation=2, groups=2).shape == (6, 1, 2)
    with torch.device("meta"):
        layer = Conv2d(4, 6, 3, padding=1, padding_mode="reflect")
    assert layer(x).shape == (2, 6, 6, 6)
