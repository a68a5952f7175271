"""Tests for ``mmgpt.pooling``: everything is checked against PyTorch's own implementation.

* ``max_pool2d`` against ``F.max_pool2d``: values, ``return_indices`` and the input gradient
  over a few hundred seeded random configurations (batched/unbatched, int/pair/None stride,
  padding up to kernel_size // 2, dilation, ceil_mode), on data with and without ties;
  NaN, -inf and windows that see only padding;
* ``avg_pool2d`` against ``F.avg_pool2d``: ``count_include_pad``, ``divisor_override``,
  ``ceil_mode``; integer inputs;
* ``adaptive_avg_pool2d`` against ``F.adaptive_avg_pool2d``: int, pair, ``None`` entries,
  outputs larger than the input and empty outputs;
* ``pool_output_size`` against the shapes PyTorch produces (incl. ceil_mode's rule);
* the modules against ``nn.MaxPool2d``, ``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d``;
* bad arguments raise ``ValueError``/``TypeError`` naming the argument.

Values are compared in float64 with tight tolerances (max pooling exactly: it only selects).
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from helpers import as_pair, assert_close, fmt, leaf
from torch import nn

from mmgpt.pooling import (AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, adaptive_avg_pool2d,
                           adaptive_pool_matrix, avg_pool2d, max_pool2d, pool_output_size)

DTYPE = torch.float64
ATOL = 1e-12  # float64 round-off on these sizes is ~1e-15; a wrong window or divisor is O(0.1)
ERRORS = (ValueError, TypeError)


def _hollow(size, kernel, stride, padding, dilation, ceil_mode) -> bool:
    """Does some window (along one axis) hold padding only? PyTorch's max_pool2d backward
    writes outside the input there (2.x), so the gradient is compared only elsewhere."""
    out = pool_output_size(size, kernel, stride, padding, dilation, ceil_mode)
    return any(all(not 0 <= i * stride - padding + t * dilation < size for t in range(kernel))
               for i in range(out))


# ---------------------------------------------------------------------------------------------
# Random configurations
# ---------------------------------------------------------------------------------------------

def _draw_configs(n: int, seed: int, kind: str) -> list[dict]:
    """Valid configurations (non-empty output) for max (with dilation) or avg pooling."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < n:
        kernel = rng.randint(1, 5) if rng.random() < 0.5 else (rng.randint(1, 5), rng.randint(1, 5))
        kh, kw = as_pair(kernel)
        roll = rng.random()
        stride = None if roll < 0.25 else rng.randint(1, 3) if roll < 0.6 else (rng.randint(1, 3), rng.randint(1, 3))
        if rng.random() < 0.5:
            padding = rng.randint(0, min(kh, kw) // 2)
        else:
            padding = (rng.randint(0, kh // 2), rng.randint(0, kw // 2))
        dilation = 1
        if kind == "max" and rng.random() < 0.5:
            dilation = rng.randint(1, 3) if rng.random() < 0.5 else (rng.randint(1, 3), rng.randint(1, 3))
        ceil_mode = rng.random() < 0.4
        (ph, pw), (dh, dw) = as_pair(padding), as_pair(dilation)
        min_h, min_w = max(1, dh * (kh - 1) + 1 - 2 * ph), max(1, dw * (kw - 1) + 1 - 2 * pw)
        size = (rng.randint(min_h, min_h + 7), rng.randint(min_w, min_w + 7))
        sh, sw = as_pair(kernel if stride is None else stride)
        if kind == "max" and (_hollow(size[0], kh, sh, ph, dh, ceil_mode)
                              or _hollow(size[1], kw, sw, pw, dw, ceil_mode)):
            continue  # tested on its own below
        cfg = dict(index=len(configs), batch=rng.choice([None, 1, 2, 3]), channels=rng.randint(1, 4),
                   size=size, kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
        if kind == "max":
            cfg.update(dilation=dilation, data=rng.choice(["randn", "randn", "ties"]))
        else:
            cfg.update(count_include_pad=rng.random() < 0.5,
                       divisor_override=rng.choice([None, None, None, 1, 3, -2]))
        configs.append(cfg)
    return configs


def _id(cfg: dict) -> str:
    text = (f"{cfg['index']}-b{cfg['batch'] if cfg['batch'] is not None else 'none'}-c{cfg['channels']}"
            f"-in{fmt(cfg['size'])}-k{fmt(cfg['kernel'])}-s{fmt(cfg['stride'])}-p{fmt(cfg['padding'])}")
    if "dilation" in cfg:
        text += f"-d{fmt(cfg['dilation'])}-{cfg['data']}"
    else:
        text += f"-{'incl' if cfg['count_include_pad'] else 'excl'}pad-div{cfg['divisor_override']}"
    return text + ("-ceil" if cfg["ceil_mode"] else "")


MAX_CONFIGS = _draw_configs(260, seed=2024, kind="max")
AVG_CONFIGS = _draw_configs(220, seed=4202, kind="avg")


def _input(cfg: dict, g: torch.Generator, dtype=DTYPE) -> torch.Tensor:
    shape = (cfg["channels"], *cfg["size"])
    if cfg["batch"] is not None:
        shape = (cfg["batch"], *shape)
    x = torch.randn(shape, generator=g, dtype=dtype)
    if cfg.get("data") == "ties":  # few distinct values: many windows hold their maximum twice
        x = torch.randint(-2, 3, shape, generator=g).to(dtype)
    return x


def _max_kwargs(cfg):
    return dict(kernel_size=cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
                dilation=cfg["dilation"], ceil_mode=cfg["ceil_mode"])


def _avg_kwargs(cfg):
    return dict(kernel_size=cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
                ceil_mode=cfg["ceil_mode"], count_include_pad=cfg["count_include_pad"],
                divisor_override=cfg["divisor_override"])


@pytest.mark.parametrize("cfg", MAX_CONFIGS, ids=_id)
def test_max_pool2d_matches_torch_forward_indices_and_backward(cfg):
    g = torch.Generator().manual_seed(cfg["index"])
    x = _input(cfg, g)
    ours_x, ref_x = leaf(x), leaf(x)
    out, indices = max_pool2d(ours_x, return_indices=True, **_max_kwargs(cfg))
    ref, ref_indices = F.max_pool2d(ref_x, return_indices=True, **_max_kwargs(cfg))
    assert out.shape == ref.shape and torch.equal(out, ref)  # a pure selection: exactly equal
    assert indices.dtype == ref_indices.dtype and torch.equal(indices, ref_indices)
    assert torch.equal(max_pool2d(x, **_max_kwargs(cfg)), ref)  # without return_indices
    upstream = torch.randn(ref.shape, generator=g, dtype=DTYPE)
    out.backward(upstream)
    ref.backward(upstream)
    assert_close(ours_x.grad, ref_x.grad, "x.grad", ATOL)


@pytest.mark.parametrize("cfg", AVG_CONFIGS, ids=_id)
def test_avg_pool2d_matches_torch_forward_and_backward(cfg):
    g = torch.Generator().manual_seed(10_000 + cfg["index"])
    x = _input(cfg, g)
    ours_x, ref_x = leaf(x), leaf(x)
    out = avg_pool2d(ours_x, **_avg_kwargs(cfg))
    ref = F.avg_pool2d(ref_x, **_avg_kwargs(cfg))
    assert_close(out, ref, "output", ATOL)
    upstream = torch.randn(ref.shape, generator=g, dtype=DTYPE)
    out.backward(upstream)
    ref.backward(upstream)
    assert_close(ours_x.grad, ref_x.grad, "x.grad", ATOL)


def test_random_configs_cover_every_feature():
    """The random draws above must actually exercise each feature they claim to."""
    def any_(configs, pred):
        return any(pred(c) for c in configs)

    def stride(c):
        return as_pair(c["kernel"] if c["stride"] is None else c["stride"])

    def unequal_pair(c, key):
        return isinstance(c[key], tuple) and len(set(c[key])) == 2

    def overhang(c):  # ceil_mode kept a window that runs past the padded input
        (kh, _), (ph, _) = as_pair(c["kernel"]), as_pair(c["padding"])
        (sh, _), (dh, _) = stride(c), as_pair(c.get("dilation", 1))
        out = pool_output_size(c["size"][0], kh, sh, ph, dh, True)
        return c["ceil_mode"] and (out - 1) * sh + dh * (kh - 1) + 1 > c["size"][0] + 2 * ph

    def dropped(c):  # ceil_mode's rule removed a window that would start in the right padding
        (kh, _), (ph, _), (sh, _), (dh, _) = (as_pair(c["kernel"]), as_pair(c["padding"]),
                                              stride(c), as_pair(c.get("dilation", 1)))
        room = c["size"][0] + 2 * ph - dh * (kh - 1) - 1
        return c["ceil_mode"] and pool_output_size(c["size"][0], kh, sh, ph, dh, True) == -(-room // sh)

    for name, configs in (("max", MAX_CONFIGS), ("avg", AVG_CONFIGS)):
        checks = {
            "unbatched": any_(configs, lambda c: c["batch"] is None),
            "stride None": any_(configs, lambda c: c["stride"] is None),
            "stride pair, unequal": any_(configs, lambda c: unequal_pair(c, "stride")),
            "stride < kernel (overlap)": any_(configs, lambda c: stride(c)[0] < as_pair(c["kernel"])[0]),
            "stride > kernel (gaps)": any_(configs, lambda c: stride(c)[0] > as_pair(c["kernel"])[0]),
            "kernel pair, unequal": any_(configs, lambda c: unequal_pair(c, "kernel")),
            "padding = kernel // 2 > 0": any_(configs, lambda c: 0 < as_pair(c["padding"])[0]
                                              == as_pair(c["kernel"])[0] // 2),
            "padding pair, unequal": any_(configs, lambda c: unequal_pair(c, "padding")),
            "ceil_mode with an overhanging window": any_(configs, overhang),
            "ceil_mode's last-window rule applied": any_(configs, dropped),
            "no ceil_mode": any_(configs, lambda c: not c["ceil_mode"]),
        }
        if name == "max":
            checks["dilation pair, unequal"] = any_(configs, lambda c: unequal_pair(c, "dilation"))
            checks["dilation 3"] = any_(configs, lambda c: c["dilation"] == 3)
            checks["tied data"] = any_(configs, lambda c: c["data"] == "ties")
        else:
            checks["count_include_pad=False with padding"] = any_(
                configs, lambda c: not c["count_include_pad"] and max(as_pair(c["padding"])) > 0)
            checks["negative divisor_override"] = any_(configs, lambda c: (c["divisor_override"] or 0) < 0)
        missing = [k for k, ok in checks.items() if not ok]
        assert not missing, f"the random {name} configurations never exercise: {missing}"


@pytest.mark.parametrize("cfg", MAX_CONFIGS[:20] + AVG_CONFIGS[:20], ids=_id)
def test_pooling_matches_torch_in_float32(cfg):
    """No silent promotion: float32 in, float32 out, still equal to PyTorch's."""
    g = torch.Generator().manual_seed(20_000 + cfg["index"])
    x = _input(cfg, g, dtype=torch.float32)
    if "dilation" in cfg:
        out, ref = max_pool2d(x, **_max_kwargs(cfg)), F.max_pool2d(x, **_max_kwargs(cfg))
        assert out.dtype == torch.float32 and torch.equal(out, ref)
    else:
        out, ref = avg_pool2d(x, **_avg_kwargs(cfg)), F.avg_pool2d(x, **_avg_kwargs(cfg))
        assert_close(out, ref, "float32 output", 1e-5)


@pytest.mark.parametrize("cfg", MAX_CONFIGS[:30] + AVG_CONFIGS[:30], ids=_id)
def test_pooling_matches_torch_on_integers(cfg):
    """Integer tensors: max selects; average divides and rounds toward zero, as PyTorch does."""
    g = torch.Generator().manual_seed(30_000 + cfg["index"])
    x = torch.randint(-50, 50, (2, cfg["channels"], *cfg["size"]), generator=g)
    if "dilation" in cfg:
        out, ref = max_pool2d(x, **_max_kwargs(cfg)), F.max_pool2d(x, **_max_kwargs(cfg))
    else:
        out, ref = avg_pool2d(x, **_avg_kwargs(cfg)), F.avg_pool2d(x, **_avg_kwargs(cfg))
    assert out.dtype == ref.dtype == torch.int64 and torch.equal(out, ref)


# ---------------------------------------------------------------------------------------------
# Max pooling: ties, NaN, -inf, hollow windows, the gradient's route
# ---------------------------------------------------------------------------------------------

def test_max_pool2d_gradient_goes_to_the_argmax_only():
    x = torch.tensor([[1.0, 5.0, 2.0, 0.0],
                      [3.0, 4.0, 8.0, 7.0],
                      [0.0, 6.0, 1.0, 1.0],
                      [2.0, 9.0, 3.0, 2.0]], dtype=DTYPE)[None, None].requires_grad_(True)
    out = max_pool2d(x, 2)
    assert out.tolist() == [[[[5.0, 8.0], [9.0, 3.0]]]]
    out.backward(torch.tensor([[[[10.0, 20.0], [30.0, 40.0]]]], dtype=DTYPE))
    expected = torch.zeros(4, 4, dtype=DTYPE)
    expected[0, 1], expected[1, 2], expected[3, 1], expected[3, 2] = 10, 20, 30, 40
    assert torch.equal(x.grad[0, 0], expected)


def test_max_pool2d_overlapping_windows_add_their_gradients():
    x = torch.zeros(1, 1, 3, 3, dtype=DTYPE)
    x[0, 0, 1, 1] = 1.0  # the centre wins all four overlapping 2x2 windows
    ours_x, ref_x = leaf(x), leaf(x)
    max_pool2d(ours_x, 2, stride=1).sum().backward()
    F.max_pool2d(ref_x, 2, stride=1).sum().backward()
    assert ours_x.grad[0, 0, 1, 1] == 4 and torch.equal(ours_x.grad, ref_x.grad)


@pytest.mark.parametrize("shape,kwargs", [
    ((1, 1, 4, 4), dict(kernel_size=2)),
    ((2, 3, 6, 7), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 7, 7), dict(kernel_size=(2, 3), stride=1, dilation=(2, 1), ceil_mode=True)),
], ids=["2x2", "3x3-s2-p1", "2x3-dilated-ceil"])
def test_max_pool2d_ties_go_to_the_first_maximum_like_torch(shape, kwargs):
    """Constant input: every window is one big tie. PyTorch picks the first maximum in
    row-major order (never the padding); so must we, for values, indices and gradients."""
    x = torch.full(shape, 0.5, dtype=DTYPE)
    ours_x, ref_x = leaf(x), leaf(x)
    out, idx = max_pool2d(ours_x, return_indices=True, **kwargs)
    ref, ref_idx = F.max_pool2d(ref_x, return_indices=True, **kwargs)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    out.sum().backward()
    ref.sum().backward()
    assert torch.equal(ours_x.grad, ref_x.grad)
    assert ours_x.grad[..., 0, 0].eq(1).all()  # the top-left pixel wins the first window


def test_max_pool2d_nan_wins_its_window_last_nan_like_torch():
    nan = float("nan")
    x = torch.tensor([[1.0, nan, 3.0, nan, 2.0, 0.0],
                      [nan, 0.0, 1.0, 2.0, 5.0, 4.0]], dtype=DTYPE)[None, None]
    kwargs = dict(kernel_size=(2, 3), stride=(1, 3))
    ours_x, ref_x = leaf(x), leaf(x)
    out, idx = max_pool2d(ours_x, return_indices=True, **kwargs)
    ref, ref_idx = F.max_pool2d(ref_x, return_indices=True, **kwargs)
    assert_close(out, ref, "output", ATOL, equal_nan=True)
    assert torch.isnan(out[0, 0, 0, 0]) and torch.isnan(out[0, 0, 0, 1])
    assert torch.equal(idx, ref_idx) and idx[0, 0, 0].tolist() == [6, 3]  # the last NaN
    out.backward(torch.ones_like(out))
    ref.backward(torch.ones_like(ref))
    assert torch.equal(ours_x.grad, ref_x.grad)


def test_max_pool2d_minus_infinity_windows_report_the_first_real_pixel_like_torch():
    inf = float("inf")
    x = torch.tensor([[-inf, -inf, 1.0], [-inf, -inf, -inf], [2.0, -inf, -inf]], dtype=DTYPE)[None, None]
    kwargs = dict(kernel_size=2, stride=1, padding=1)
    ours_x, ref_x = leaf(x), leaf(x)
    out, idx = max_pool2d(ours_x, return_indices=True, **kwargs)
    ref, ref_idx = F.max_pool2d(ref_x, return_indices=True, **kwargs)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    out.backward(torch.ones_like(out))
    ref.backward(torch.ones_like(ref))
    assert torch.equal(ours_x.grad, ref_x.grad)


@pytest.mark.parametrize("size,kwargs", [
    ((4, 4), dict(kernel_size=2, stride=1, padding=1, dilation=5)),
    ((7, 1), dict(kernel_size=2, stride=(4, 3), padding=(0, 1), dilation=3, ceil_mode=True)),
    ((2, 5), dict(kernel_size=(3, 4), stride=4, padding=1, dilation=3, ceil_mode=True)),
], ids=["dilation-5", "width-1-ceil", "height-2-ceil"])
def test_max_pool2d_windows_of_padding_only(size, kwargs):
    """A dilated window can land entirely on padding: it gives -inf (PyTorch's value and
    index); its gradient goes nowhere (PyTorch's backward writes outside the input there, so
    only the forward pass is compared)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, *size, generator=g, dtype=DTYPE)
    out, idx = max_pool2d(x, return_indices=True, **kwargs)
    ref, ref_idx = F.max_pool2d(x, return_indices=True, **kwargs)
    assert torch.isinf(out).any() and torch.equal(out, ref) and torch.equal(idx, ref_idx)
    xg = leaf(x)
    y = max_pool2d(xg, **kwargs)
    y.backward(torch.where(torch.isinf(y), 1.0, 0.0).to(DTYPE))
    assert torch.equal(xg.grad, torch.zeros_like(x))


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_pooling_non_contiguous_inputs(layout):
    g = torch.Generator().manual_seed(3)
    if layout == "channels_last":
        x = torch.randn(2, 9, 8, 3, generator=g, dtype=DTYPE).permute(0, 3, 1, 2)
    elif layout == "transposed":
        x = torch.randn(2, 3, 9, 8, generator=g, dtype=DTYPE).transpose(2, 3)
    else:
        x = torch.randn(2, 6, 12, 11, generator=g, dtype=DTYPE)[:, ::2, 1:, ::2]
    assert not x.is_contiguous()
    for ours, ref, kwargs in (
        (max_pool2d, F.max_pool2d, dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2))),
        (avg_pool2d, F.avg_pool2d, dict(kernel_size=(3, 2), stride=1, padding=1, count_include_pad=False)),
        (adaptive_avg_pool2d, F.adaptive_avg_pool2d, dict(output_size=(3, 4))),
    ):
        ours_x, ref_x = leaf(x), leaf(x)
        out, expected = ours(ours_x, **kwargs), ref(ref_x, **kwargs)
        assert_close(out, expected, f"{ours.__name__} output", ATOL)
        upstream = torch.randn(expected.shape, generator=g, dtype=DTYPE)
        out.backward(upstream)
        expected.backward(upstream)
        assert_close(ours_x.grad, ref_x.grad, f"{ours.__name__} x.grad", ATOL)


def test_pooling_empty_batch():
    x = torch.zeros(0, 3, 7, 6, dtype=DTYPE)
    assert max_pool2d(x, 2).shape == F.max_pool2d(x, 2).shape == (0, 3, 3, 3)
    assert avg_pool2d(x, 3, 2, 1).shape == F.avg_pool2d(x, 3, 2, 1).shape == (0, 3, 4, 3)
    assert adaptive_avg_pool2d(x, 2).shape == F.adaptive_avg_pool2d(x, 2).shape == (0, 3, 2, 2)


# ---------------------------------------------------------------------------------------------
# Average pooling: hand-checkable divisors
# ---------------------------------------------------------------------------------------------

def test_avg_pool2d_known_divisors():
    x = torch.ones(1, 1, 3, 3, dtype=DTYPE)
    # 3x3 windows, stride 2, padding 1: each window covers 4 real pixels of 9 positions.
    assert_close(avg_pool2d(x, 3, 2, 1), torch.full((1, 1, 2, 2), 4 / 9, dtype=DTYPE), "4 of 9", ATOL)
    assert torch.equal(avg_pool2d(x, 3, 2, 1, count_include_pad=False), torch.ones(1, 1, 2, 2, dtype=DTYPE))
    assert torch.equal(avg_pool2d(x, 3, 2, 1, divisor_override=2), torch.full((1, 1, 2, 2), 2.0, dtype=DTYPE))
    # ceil_mode: a 2x2 window at stride 2 on 3 pixels keeps a last window of 1 pixel, whose
    # divisor is 1 (the overhang past the input is not padding, so it never counts).
    out = avg_pool2d(torch.arange(9.0, dtype=DTYPE).reshape(1, 1, 3, 3), 2, ceil_mode=True)
    assert out.tolist() == [[[[2.0, 3.5], [6.5, 8.0]]]]
    assert torch.equal(out, F.avg_pool2d(torch.arange(9.0, dtype=DTYPE).reshape(1, 1, 3, 3), 2, ceil_mode=True))


# ---------------------------------------------------------------------------------------------
# Adaptive average pooling
# ---------------------------------------------------------------------------------------------

def _draw_adaptive_cases(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    cases = []
    for index in range(n):
        size = (rng.randint(1, 16), rng.randint(1, 16))
        roll = rng.random()
        if roll < 0.3:
            output_size = rng.randint(1, 9)
        elif roll < 0.6:
            output_size = (rng.randint(1, 9), rng.randint(1, 9))
        elif roll < 0.8:
            output_size = rng.choice([(None, rng.randint(1, 9)), (rng.randint(1, 9), None), (None, None)])
        elif roll < 0.9:
            output_size = [rng.randint(1, 20), rng.randint(1, 20)]  # a list, maybe larger than the input
        else:
            output_size = rng.choice([0, (0, 3), (2, 0)])  # empty outputs are allowed
        cases.append((index, rng.choice([None, 1, 3]), size, output_size))
    return cases


ADAPTIVE_CASES = _draw_adaptive_cases(90, seed=9)


@pytest.mark.parametrize("case", ADAPTIVE_CASES,
                         ids=[f"{i}-b{b}-in{fmt(s)}-out{fmt(tuple(o)) if isinstance(o, list) else fmt(o)}"
                              for i, b, s, o in ADAPTIVE_CASES])
def test_adaptive_avg_pool2d_matches_torch(case):
    index, batch, size, output_size = case
    g = torch.Generator().manual_seed(index)
    shape = (2, *size) if batch is None else (batch, 2, *size)
    x = torch.randn(shape, generator=g, dtype=DTYPE)
    ours_x, ref_x = leaf(x), leaf(x)
    out, ref = adaptive_avg_pool2d(ours_x, output_size), F.adaptive_avg_pool2d(ref_x, output_size)
    assert_close(out, ref, "output", ATOL)
    if ref.numel():
        upstream = torch.randn(ref.shape, generator=g, dtype=DTYPE)
        out.backward(upstream)
        ref.backward(upstream)
        assert_close(ours_x.grad, ref_x.grad, "x.grad", ATOL)


def test_adaptive_cases_cover_every_feature():
    outs = [o for _, _, _, o in ADAPTIVE_CASES]
    sizes = [(s, o) for _, _, s, o in ADAPTIVE_CASES]
    assert any(isinstance(o, int) and o > 0 for o in outs)
    assert any(isinstance(o, tuple) and None in o for o in outs)
    assert any(o == 0 or (isinstance(o, tuple) and 0 in o) for o in outs)
    assert any(isinstance(o, list) and o[0] > s[0] for s, o in sizes)  # upsampling-like windows
    assert any(isinstance(o, int) and o > 0 and s[0] % o and o < s[0] for s, o in sizes)  # uneven windows
    assert any(b is None for _, b, _, _ in ADAPTIVE_CASES)


def test_adaptive_pool_matrix_windows():
    # 7 -> 3: windows [0, 3), [2, 5), [4, 7): sizes 3, overlapping by one position.
    m = adaptive_pool_matrix(7, 3, dtype=DTYPE)
    expected = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1]], dtype=DTYPE) / 3
    assert_close(m, expected, "7 -> 3 windows", ATOL)
    assert_close(adaptive_pool_matrix(8, 4, dtype=DTYPE).sum(1), torch.ones(4, dtype=DTYPE), "8 -> 4 rows", ATOL)
    # divisible sizes: adaptive pooling is plain average pooling
    x = torch.randn(2, 3, 12, 8, dtype=DTYPE)
    assert_close(adaptive_avg_pool2d(x, (4, 2)), avg_pool2d(x, (3, 4)), "adaptive = plain", ATOL)


# ---------------------------------------------------------------------------------------------
# pool_output_size
# ---------------------------------------------------------------------------------------------

def _draw_size_cases(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        k = rng.randint(1, 6)
        cases.append((rng.randint(1, 20), k, rng.randint(1, 4), rng.randint(0, k // 2), rng.randint(1, 3),
                      rng.random() < 0.6))
    return cases


SIZE_CASES = _draw_size_cases(250, seed=12)


@pytest.mark.parametrize("size,kernel,stride,padding,dilation,ceil_mode", SIZE_CASES,
                         ids=[f"n{n}-k{k}-s{s}-p{p}-d{d}-{'ceil' if c else 'floor'}"
                              for n, k, s, p, d, c in SIZE_CASES])
def test_pool_output_size_matches_torch(size, kernel, stride, padding, dilation, ceil_mode):
    expected = pool_output_size(size, kernel, stride, padding, dilation, ceil_mode)
    x = torch.zeros(1, 1, size, 1, dtype=DTYPE)
    kwargs = dict(kernel_size=(kernel, 1), stride=(stride, 1), padding=(padding, 0), dilation=(dilation, 1),
                  ceil_mode=ceil_mode)
    if expected >= 1:
        assert F.max_pool2d(x, **kwargs).shape[2] == expected
        assert max_pool2d(x, **kwargs).shape[2] == expected
    else:
        with pytest.raises(RuntimeError):
            F.max_pool2d(x, **kwargs)
        with pytest.raises(ValueError, match="empty"):
            max_pool2d(x, **kwargs)


def test_size_cases_include_the_ceil_rule_and_empty_outputs():
    def rule_applies(n, k, s, p, d, c):
        room = n + 2 * p - d * (k - 1) - 1
        return c and room >= 0 and pool_output_size(n, k, s, p, d, True) == -(-room // s)

    assert any(rule_applies(*case) for case in SIZE_CASES)
    assert any(pool_output_size(*case) < 1 for case in SIZE_CASES)
    assert any(c and pool_output_size(n, k, s, p, d, True) > pool_output_size(n, k, s, p, d, False)
               for n, k, s, p, d, c in SIZE_CASES)


def test_pool_output_size_known_values():
    assert pool_output_size(112, 3, 2, 1) == 56  # ResNet's stem pooling
    assert pool_output_size(56, 2) == 28  # stride defaults to the kernel size
    assert pool_output_size(5, 2, 2, ceil_mode=True) == 3  # keeps a partial last window
    assert pool_output_size(5, 2, 2) == 2
    # ceil_mode's rule: rounding up gives 4 windows, but the 4th would start at padded position
    # 6 = 5 + 1, inside the right padding, so it is dropped.
    assert pool_output_size(5, 2, 2, 1, ceil_mode=True) == 3
    assert max_pool2d(torch.zeros(1, 1, 5, 5), 2, 2, 1, ceil_mode=True).shape[-1] == 3
    assert pool_output_size(2, 5, 1) == -2  # returned as is, not clamped
    assert pool_output_size(2, 5) == 0  # stride 5: (2 - 4 - 1) // 5 + 1


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(size=-1, kernel_size=3), ValueError, "size"),
    (dict(size=8, kernel_size=0), ValueError, "kernel_size"),
    (dict(size=8, kernel_size=3, stride=0), ValueError, "stride"),
    (dict(size=8, kernel_size=3, padding=-1), ValueError, "padding"),
    (dict(size=8, kernel_size=3, dilation=0), ValueError, "dilation"),
    (dict(size=8.0, kernel_size=3), TypeError, "size"),
    (dict(size=8, kernel_size=(2, 2)), TypeError, "kernel_size"),
], ids=["size-neg", "kernel-0", "stride-0", "padding-neg", "dilation-0", "size-float", "kernel-tuple"])
def test_pool_output_size_rejects_bad_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=rf"\b{name}\b"):
        pool_output_size(**kwargs)


# ---------------------------------------------------------------------------------------------
# Modules == nn modules
# ---------------------------------------------------------------------------------------------

MODULE_CASES = [
    (MaxPool2d, nn.MaxPool2d, dict(kernel_size=2)),
    (MaxPool2d, nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1)),
    (MaxPool2d, nn.MaxPool2d, dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1),
                                   ceil_mode=True)),
    (MaxPool2d, nn.MaxPool2d, dict(kernel_size=2, return_indices=True)),
    (AvgPool2d, nn.AvgPool2d, dict(kernel_size=2)),
    (AvgPool2d, nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    (AvgPool2d, nn.AvgPool2d, dict(kernel_size=(2, 3), stride=2, padding=(1, 1), ceil_mode=True,
                                   divisor_override=4)),
    (AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, dict(output_size=3)),
    (AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, dict(output_size=(None, 2))),
    (AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, dict(output_size=(5, 1))),
]


def _module_id(case) -> str:
    ours, _, kwargs = case
    return ours.__name__ + "-" + "-".join(f"{k}={fmt(v)}" for k, v in kwargs.items())


@pytest.mark.parametrize("case", MODULE_CASES, ids=_module_id)
def test_modules_match_nn_modules(case):
    ours_cls, ref_cls, kwargs = case
    ours, ref = ours_cls(**kwargs), ref_cls(**kwargs)
    assert repr(ours) == repr(ref)  # same name, same printed arguments
    for name in ref_cls.__constants__:
        assert getattr(ours, name) == getattr(ref, name), name
    assert list(ours.parameters()) == [] and ours.state_dict() == {} == ref.state_dict()
    g = torch.Generator().manual_seed(len(repr(ours)))
    for shape in [(2, 3, 9, 8), (3, 7, 10)]:  # batched and unbatched
        x = torch.randn(shape, generator=g, dtype=DTYPE)
        ours_x, ref_x = leaf(x), leaf(x)
        out, expected = ours(ours_x), ref(ref_x)
        if kwargs.get("return_indices"):
            assert torch.equal(out[1], expected[1])
            out, expected = out[0], expected[0]
        assert_close(out, expected, "output", ATOL)
        upstream = torch.randn(expected.shape, generator=g, dtype=DTYPE)
        out.backward(upstream)
        expected.backward(upstream)
        assert_close(ours_x.grad, ref_x.grad, "x.grad", ATOL)


def test_modules_defaults_and_positional_order_match_nn():
    # nn.MaxPool2d's positional order is (kernel, stride, padding, dilation, return_indices, ceil_mode)
    assert repr(MaxPool2d(3, 1, 1, 2, False, True)) == repr(nn.MaxPool2d(3, 1, 1, 2, False, True))
    assert repr(AvgPool2d(3, 1, 1, True, False, 5)) == repr(nn.AvgPool2d(3, 1, 1, True, False, 5))
    m, r = AvgPool2d(3, 1, 1, True, False, 5), nn.AvgPool2d(3, 1, 1, True, False, 5)
    assert ((m.ceil_mode, m.count_include_pad, m.divisor_override)
            == (r.ceil_mode, r.count_include_pad, r.divisor_override))
    assert MaxPool2d(4).stride == nn.MaxPool2d(4).stride == 4
    x = torch.randn(1, 2, 7, 7)
    assert torch.equal(MaxPool2d(3, 1, 1, 2, False, True)(x), nn.MaxPool2d(3, 1, 1, 2, False, True)(x))


# ---------------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------------

def _x(*shape, dtype=DTYPE):
    return torch.randn(*shape, dtype=dtype)


MAX_ERRORS = [
    ("x-2d", dict(x=_x(6, 6)), r"\bx\b.*4-D"),
    ("x-5d", dict(x=_x(1, 1, 2, 6, 6)), r"\bx\b.*4-D"),
    ("x-not-a-tensor", dict(x=[[1.0]]), r"\bx\b"),
    ("x-zero-channels", dict(x=_x(1, 0, 6, 6)), r"\bx\b.*non-zero"),
    ("x-zero-height", dict(x=_x(1, 2, 0, 6)), r"\bx\b.*non-zero"),
    ("x-bool", dict(x=torch.ones(1, 1, 4, 4, dtype=torch.bool)), r"\bx\b.*dtype"),
    ("kernel-0", dict(kernel_size=0), r"\bkernel_size\b"),
    ("kernel-negative", dict(kernel_size=-2), r"\bkernel_size\b"),
    ("kernel-pair-0", dict(kernel_size=(2, 0)), r"\bkernel_size\b"),
    ("kernel-3-tuple", dict(kernel_size=(2, 2, 2)), r"\bkernel_size\b"),
    ("kernel-float", dict(kernel_size=2.0), r"\bkernel_size\b"),
    ("stride-0", dict(stride=0), r"\bstride\b"),
    ("stride-pair-0", dict(stride=(1, 0)), r"\bstride\b"),
    ("stride-bool", dict(stride=True), r"\bstride\b"),
    ("padding-negative", dict(padding=-1), r"\bpadding\b"),
    ("padding-over-half", dict(padding=2), r"(?s)\bpadding\b.*kernel_size"),
    ("padding-pair-over-half", dict(kernel_size=(3, 2), padding=(1, 2)), r"(?s)\bpadding\b.*kernel_size"),
    ("padding-height-over-half", dict(kernel_size=3, padding=(2, 0)), r"(?s)\bpadding\b.*kernel_size"),
    ("padding-width-over-half", dict(kernel_size=5, padding=(0, 3)), r"(?s)\bpadding\b.*kernel_size"),
    ("padding-over-half-even-dilated", dict(kernel_size=2, padding=2, dilation=3), r"(?s)\bpadding\b.*kernel_size"),
    ("dilation-0", dict(dilation=0), r"\bdilation\b"),
    ("dilation-3-tuple", dict(dilation=(1, 1, 1)), r"\bdilation\b"),
    ("empty-output", dict(x=_x(1, 2, 1, 6)), r"empty"),
    ("empty-output-dilation", dict(x=_x(1, 2, 6, 6), dilation=(1, 6)), r"empty"),
]
_MAX_BASE = dict(kernel_size=2, stride=None, padding=0, dilation=1)


@pytest.mark.parametrize("overrides,pattern", [c[1:] for c in MAX_ERRORS], ids=[c[0] for c in MAX_ERRORS])
def test_max_pool2d_rejects_bad_arguments(overrides, pattern):
    """A message that names the problem, for a call F.max_pool2d refuses as well (max_pool2d
    keeps its contract: it refuses no call PyTorch accepts)."""
    call = dict(_MAX_BASE, x=_x(2, 3, 6, 6))
    max_pool2d(**call)  # the base is valid
    call.update(overrides)
    with pytest.raises(ERRORS, match=pattern):
        max_pool2d(**call)
    x = call.pop("x")
    with pytest.raises(Exception):
        F.max_pool2d(x, **call)


AVG_ERRORS = [
    ("x-1d", dict(x=_x(6)), r"\bx\b.*4-D"),
    ("x-zero-width", dict(x=_x(1, 2, 3, 0)), r"\bx\b.*non-zero"),
    ("kernel-0", dict(kernel_size=0), r"\bkernel_size\b"),
    ("stride-0", dict(stride=0), r"\bstride\b"),
    ("stride-3-tuple", dict(stride=(1, 2, 3)), r"\bstride\b"),
    ("padding-over-half", dict(kernel_size=3, padding=2), r"(?s)\bpadding\b.*kernel_size"),
    ("padding-negative", dict(padding=(0, -1)), r"\bpadding\b"),
    ("divisor_override-0", dict(divisor_override=0), r"\bdivisor_override\b"),
    ("divisor_override-float", dict(divisor_override=2.5), r"\bdivisor_override\b"),
    ("empty-output", dict(kernel_size=(7, 2)), r"empty"),
    ("x-complex", dict(x=torch.zeros(1, 2, 6, 6, dtype=torch.complex64)), r"\bx\b.*dtype"),
]


@pytest.mark.parametrize("overrides,pattern", [c[1:] for c in AVG_ERRORS], ids=[c[0] for c in AVG_ERRORS])
def test_avg_pool2d_rejects_bad_arguments(overrides, pattern):
    call = dict(x=_x(2, 3, 6, 6), kernel_size=2)
    avg_pool2d(**call)
    call.update(overrides)
    with pytest.raises(ERRORS, match=pattern):
        avg_pool2d(**call)


ADAPTIVE_ERRORS = [
    ("x-2d", dict(x=_x(6, 6)), r"\bx\b.*4-D"),
    ("x-empty-height", dict(x=_x(1, 2, 0, 6)), r"\bx\b"),
    ("x-int", dict(x=torch.zeros(1, 2, 6, 6, dtype=torch.int64)), r"\bx\b.*floating"),
    ("output_size-negative", dict(output_size=-1), r"\boutput_size\b"),
    ("output_size-pair-negative", dict(output_size=(2, -3)), r"\boutput_size\b"),
    ("output_size-3-tuple", dict(output_size=(2, 2, 2)), r"\boutput_size\b"),
    ("output_size-float", dict(output_size=2.0), r"\boutput_size\b"),
    ("output_size-pair-float", dict(output_size=(2.0, 2)), r"\boutput_size\b"),
    ("output_size-bool", dict(output_size=True), r"\boutput_size\b"),
    ("output_size-None", dict(output_size=None), r"\boutput_size\b"),
    ("output_size-string", dict(output_size="ab"), r"\boutput_size\b"),
]


@pytest.mark.parametrize("overrides,pattern", [c[1:] for c in ADAPTIVE_ERRORS], ids=[c[0] for c in ADAPTIVE_ERRORS])
def test_adaptive_avg_pool2d_rejects_bad_arguments(overrides, pattern):
    call = dict(x=_x(2, 3, 6, 6), output_size=2)
    adaptive_avg_pool2d(**call)
    call.update(overrides)
    with pytest.raises(ERRORS, match=pattern):
        adaptive_avg_pool2d(**call)


@pytest.mark.parametrize("make,pattern", [
    (lambda: MaxPool2d(0), r"\bkernel_size\b"),
    (lambda: MaxPool2d(2, stride=0), r"\bstride\b"),
    (lambda: MaxPool2d(2, padding=2), r"\bpadding\b"),
    (lambda: MaxPool2d(3, dilation=0), r"\bdilation\b"),
    (lambda: AvgPool2d((2, 2, 2)), r"\bkernel_size\b"),
    (lambda: AvgPool2d(3, padding=(1, 2)), r"\bpadding\b"),
    (lambda: AvgPool2d(3, divisor_override=0), r"\bdivisor_override\b"),
    (lambda: AdaptiveAvgPool2d((3, -1)), r"\boutput_size\b"),
    (lambda: AdaptiveAvgPool2d(3.5), r"\boutput_size\b"),
], ids=["max-kernel-0", "max-stride-0", "max-padding", "max-dilation-0", "avg-kernel-3-tuple", "avg-padding",
        "avg-divisor-0", "adaptive-negative", "adaptive-float"])
def test_module_constructors_reject_bad_arguments(make, pattern):
    with pytest.raises(ERRORS, match=pattern):
        make()


def test_module_forward_rejects_wrong_input():
    with pytest.raises(ERRORS, match=r"\bx\b.*4-D"):
        MaxPool2d(2)(torch.randn(4, 4))
    with pytest.raises(ERRORS, match="empty"):
        AvgPool2d(3)(torch.randn(1, 1, 2, 5))


# ---------------------------------------------------------------------------------------------
# No host syncs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_pooling_reads_no_values_on_the_host(dtype):
    """Each pooling runs on the meta device, where tensors have shapes but no values: so no
    ``if`` on the data and no ``.item()``, nothing that would wait for a GPU at every step
    (max pooling's tie and NaN rules once branched on ``bool(tensor.any())``)."""
    x = torch.empty(2, 3, 9, 9, device="meta", dtype=dtype)
    out, indices = max_pool2d(x, 3, 2, 1, dilation=(1, 2), ceil_mode=True, return_indices=True)
    assert out.shape == indices.shape == F.max_pool2d(torch.zeros(2, 3, 9, 9), 3, 2, 1, (1, 2), True).shape
    assert MaxPool2d(3, 2, 1)(x).shape == (2, 3, 5, 5)
    assert avg_pool2d(x, 3, 2, 1, divisor_override=4).shape == (2, 3, 5, 5)
    assert avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False).shape == (2, 3, 5, 5)
    if dtype.is_floating_point:
        assert adaptive_avg_pool2d(x, (None, 2)).shape == (2, 3, 9, 2)


@pytest.mark.parametrize("output_size", [(None, -1), (None, 2.5), (True, None), [None, "2"]])
def test_adaptive_pooling_checks_the_size_next_to_a_none(output_size):
    with pytest.raises(ERRORS, match=r"\boutput_size\b"):
        adaptive_avg_pool2d(torch.zeros(1, 2, 6, 6), output_size)
    with pytest.raises(ERRORS, match=r"\boutput_size\b"):
        AdaptiveAvgPool2d(output_size)


def test_max_pooling_ties_and_nans_without_reading_values(monkeypatch):
    """On an accelerator, max pooling applies PyTorch's NaN rule to every window rather than
    asking first whether there is a NaN (which would wait for the device). Run that path here
    by pretending the tensors are not on the host: values and indices still equal PyTorch's."""
    import mmgpt.pooling

    monkeypatch.setattr(mmgpt.pooling, "on_host", lambda x: False)
    x = torch.tensor([[1.0, 1.0, float("nan"), 0.0, 0.0],
                      [float("nan"), 2.0, float("nan"), 0.0, 0.0],
                      [-float("inf"), -float("inf"), 3.0, 3.0, 0.0],
                      [-float("inf"), -float("inf"), 0.0, 0.0, 0.0],
                      [5.0, 5.0, 5.0, 5.0, 5.0]]).view(1, 1, 5, 5)
    for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                   dict(kernel_size=2, stride=1, dilation=2, ceil_mode=True)):
        out, idx = max_pool2d(x, return_indices=True, **kwargs)
        ref, ref_idx = F.max_pool2d(x, return_indices=True, **kwargs)
        torch.testing.assert_close(out, ref, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(idx, ref_idx), kwargs
