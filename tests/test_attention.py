"""Tests for ``mmgpt.attention``: everything is checked against PyTorch's own implementation.

* ``scaled_dot_product_attention`` against ``F.scaled_dot_product_attention`` over seeded random
  configurations: leading batch dimensions that broadcast, L != S, value width != key width,
  boolean / float / causal masks (also broadcast ones), custom scales; float64 and float32
  tight, bfloat16 loose; the gradients of q, k and v too;
* fully masked rows: zero output and zero gradient, as PyTorch 2.13 gives; ``softmax`` equals
  ``torch.softmax`` elsewhere and does not overflow;
* dropout: ``dropout_p=0`` is deterministic; with the same seed the weights are dropped exactly
  as PyTorch drops them; statistically, the dropped fraction is ``p`` and the mean is unbiased;
* the masks (causal with offset, padding, prefix-LM) against their definitions;
* ``MultiHeadAttention.from_torch`` against ``nn.MultiheadAttention``: outputs, averaged and
  per-head weights, with ``key_padding_mask`` and ``attn_mask`` (bool and float), cross-attention
  with ``kdim``, no bias; input gradients;
* the KV cache: decoding piece by piece equals one full causal pass (self-attention) and the
  cached context equals recomputing it (cross-attention); the fused path equals the book's;
* bad inputs raise ``ValueError``/``TypeError`` naming the problem.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, leaf
from torch import nn

from mmgpt.attention import (KVCache, MultiHeadAttention, attention_weights, causal_mask,
                             padding_mask, prefix_causal_mask, scaled_dot_product_attention,
                             softmax)

TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 3e-2}
ERRORS = (ValueError, TypeError)


# ---------------------------------------------------------------------------------------------
# scaled_dot_product_attention against F.scaled_dot_product_attention
# ---------------------------------------------------------------------------------------------

def _draw_case(seed: int, dtype: torch.dtype) -> dict:
    """Random q, k, v with broadcastable batch dims and a random mask kind, plus F's kwargs."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    batch = [rng.randint(1, 3) for _ in range(rng.randint(0, 2))]
    qb, kb = list(batch), list(batch)
    if batch and rng.random() < 0.4:  # broadcast one batch dim of q or of k/v
        i = rng.randrange(len(batch))
        (qb if rng.random() < 0.5 else kb)[i] = 1
    L, S, E, Ev = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 16), rng.randint(1, 16)
    q = torch.randn(*qb, L, E, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(*kb, S, E, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(*kb, S, Ev, generator=g, dtype=torch.float64).to(dtype)
    kind = rng.choice(["none", "bool", "bool_broadcast", "float", "float32", "causal"])
    out_batch = list(torch.broadcast_shapes(tuple(qb), tuple(kb)))
    kwargs = {}
    if kind.startswith("bool"):
        shape = (L, S) if kind == "bool" else rng.choice([(1, S), (L, 1), (*[1] * len(batch), L, S)])
        if kind == "bool" and out_batch and rng.random() < 0.5:
            shape = (*out_batch, L, S)
        mask = torch.rand(shape, generator=g) < 0.7
        kwargs["attn_mask"] = mask
    elif kind.startswith("float"):
        mdtype = torch.float32 if kind == "float32" else dtype
        mask = torch.randn(L, S, generator=g, dtype=torch.float64) * 2
        mask = mask.masked_fill(torch.rand(L, S, generator=g) < 0.2, float("-inf"))
        kwargs["attn_mask"] = mask.to(mdtype)
    elif kind == "causal":
        kwargs["is_causal"] = True
    roll = rng.random()
    if roll < 0.3:
        kwargs["scale"] = rng.choice([0.1, 0.5, 2.0, 1.0])
    return dict(q=q, k=k, v=v, kwargs=kwargs, kind=kind)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("seed", range(40))
def test_sdpa_matches_torch_forward_and_backward(seed, dtype):
    case = _draw_case(seed, dtype)
    tol = TOL[dtype]
    ours_in = [leaf(case[n]) for n in "qkv"]
    ref_in = [leaf(case[n]) for n in "qkv"]
    ours = scaled_dot_product_attention(*ours_in, **case["kwargs"])
    ref = F.scaled_dot_product_attention(*ref_in, **case["kwargs"])
    assert_close(ours, ref, f"output ({case['kind']})", tol)
    grad = torch.randn_like(ref)
    ours.backward(grad)
    ref.backward(grad)
    for name, a, b in zip("qkv", ours_in, ref_in):
        assert_close(a.grad, b.grad, f"grad of {name} ({case['kind']})", tol)


@pytest.mark.parametrize("seed", range(8))
def test_sdpa_bfloat16_loosely_matches_float64(seed):
    """bf16 keeps ~3 significant digits: compare with float64 PyTorch, loosely."""
    case = _draw_case(100 + seed, torch.float64)
    kwargs = dict(case["kwargs"])
    if "attn_mask" in kwargs and kwargs["attn_mask"].dtype != torch.bool:
        kwargs["attn_mask"] = kwargs["attn_mask"].float()  # bf16 query accepts a float32 mask
    ours = scaled_dot_product_attention(*(case[n].bfloat16() for n in "qkv"), **kwargs)
    ref = F.scaled_dot_product_attention(*(case[n] for n in "qkv"), **case["kwargs"])
    assert ours.dtype == torch.bfloat16
    assert_close(ours.double(), ref, "bfloat16 output vs float64", 3e-2, rtol=3e-2)


def test_sdpa_unbatched_and_4d_heads():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    assert_close(scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0]),
           F.scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0]), "2-D input", 1e-12)
    assert_close(scaled_dot_product_attention(q, k, v, is_causal=True),
           F.scaled_dot_product_attention(q, k, v, is_causal=True), "4-D input", 1e-12)


def test_sdpa_grouped_query_attention():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 6, 5, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 7, 8, generator=g, dtype=torch.float64) for _ in range(2))
    assert_close(scaled_dot_product_attention(q, k, v, enable_gqa=True),
           F.scaled_dot_product_attention(q, k, v, enable_gqa=True), "gqa", 1e-12)


def test_weights_are_a_distribution_and_output_is_weights_times_v():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = causal_mask(6)
    out, w = scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    assert w.shape == (3, 6, 6)
    assert (w >= 0).all() and (w[:, ~mask] == 0).all()
    assert_close(w.sum(-1), torch.ones(3, 6, dtype=torch.float64), "row sums", 1e-12)
    assert_close(out, w @ v, "out vs weights @ v", 1e-12)
    assert_close(attention_weights(q, k, is_causal=True), w, "attention_weights", 1e-12)
    # against the formula written out: softmax(q k^T / sqrt(d)) with the masked entries at -inf
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~mask, float("-inf"))
    assert_close(w, torch.softmax(scores, -1), "weights vs torch.softmax", 1e-12)


# ---------------------------------------------------------------------------------------------
# softmax and fully masked rows
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch_and_does_not_overflow(dim):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 6, generator=g, dtype=torch.float64) * 10
    assert_close(softmax(x, dim), torch.softmax(x, dim), "softmax", 1e-12)
    big = torch.tensor([1000.0, 999.0, -1000.0])  # exp(1000) overflows float32
    assert torch.isinf(big.exp()).any()
    assert_close(softmax(big), torch.softmax(big, 0), "softmax of large numbers", 1e-6)
    assert torch.isfinite(softmax(big)).all()


def test_softmax_of_a_fully_masked_row_is_zero_not_nan():
    x = torch.tensor([[0.0, 1.0, float("-inf")], [float("-inf")] * 3])
    assert torch.isnan(torch.softmax(x, -1)[1]).all()  # what torch.softmax does
    out = softmax(x)
    assert (out[1] == 0).all()
    assert_close(out[0], torch.softmax(x[0], -1), "partially masked row", 1e-7)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_fully_masked_rows_give_zero_output_and_gradient_like_torch(mask_kind):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    allowed = torch.rand(5, 5, generator=g) < 0.6
    allowed[1] = False  # query 1 may attend to nothing
    allowed[2, 0] = True
    mask = allowed if mask_kind == "bool" else torch.zeros(5, 5, dtype=torch.float64).masked_fill(
        ~allowed, float("-inf"))
    ours_in, ref_in = [leaf(t) for t in (q, k, v)], [leaf(t) for t in (q, k, v)]
    ours = scaled_dot_product_attention(*ours_in, attn_mask=mask)
    ref = F.scaled_dot_product_attention(*ref_in, attn_mask=mask)
    assert (ref[..., 1, :] == 0).all(), "PyTorch's behaviour changed: fully masked row not 0"
    assert (ours[..., 1, :] == 0).all()
    assert_close(ours, ref, "output", 1e-12)
    ours.sum().backward()
    ref.sum().backward()
    for name, a, b in zip("qkv", ours_in, ref_in):
        assert torch.isfinite(a.grad).all(), f"grad of {name} is not finite"
        assert_close(a.grad, b.grad, f"grad of {name}", 1e-12)
    assert (ours_in[0].grad[..., 1, :] == 0).all()


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------

def _qkv(seed, *shape, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=dtype) for _ in range(3)]


def test_dropout_zero_is_deterministic():
    q, k, v = _qkv(5, 2, 3, 6, 8)
    torch.manual_seed(0)
    a = scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    b = scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    assert torch.equal(a, b)
    assert torch.equal(a, scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_same_seed_same_mask_as_torch(p):
    q, k, v = _qkv(6, 2, 3, 6, 8)
    torch.manual_seed(123)
    ours = scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    torch.manual_seed(123)
    ref = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    assert_close(ours, ref, "dropout output with the same seed", 1e-12)
    assert not torch.allclose(ours, scaled_dot_product_attention(q, k, v, is_causal=True))


def test_dropout_statistics():
    p = 0.3
    q, k, v = _qkv(7, 4, 16, 16, 8)
    clean, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    torch.manual_seed(0)
    _, dropped = scaled_dot_product_attention(q, k, v, dropout_p=p, return_weights=True)
    kept = dropped != 0
    assert abs(1 - kept.double().mean().item() - p) < 0.03  # 4096 Bernoulli draws: sd 0.007
    assert_close(dropped[kept], w[kept] / (1 - p), "kept weights are scaled by 1/(1-p)", 1e-12)
    draws = scaled_dot_product_attention(*(t.expand(400, *t.shape) for t in (q, k, v)),
                                         dropout_p=p)  # 400 independent dropout masks
    mean = draws.mean(0)
    assert (mean - clean).abs().mean() < 0.02  # unbiased: E[dropout(w)] = w
    assert (scaled_dot_product_attention(q, k, v, dropout_p=1.0) == 0).all()


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("L,S,offset", [(4, 4, 0), (3, 6, 0), (6, 3, 0), (2, 6, 4), (5, 5, -1)])
def test_causal_mask(L, S, offset):
    mask = causal_mask(L, S, offset=offset)
    assert mask.dtype == torch.bool and mask.shape == (L, S)
    for i in range(L):
        for j in range(S):
            assert mask[i, j] == (j <= i + offset)
    if offset == 0:  # what is_causal=True means in PyTorch
        q, k, v = _qkv(8, 1, max(L, S), 4)
        q, k, v = q[:, :L], k[:, :S], v[:, :S]
        assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
               F.scaled_dot_product_attention(q, k, v, is_causal=True), "is_causal", 1e-12)
    assert torch.equal(causal_mask(4), torch.ones(4, 4, dtype=torch.bool).tril())


def test_padding_mask():
    mask = padding_mask([3, 1, 0])
    assert mask.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    assert padding_mask(torch.tensor([2, 4]), max_len=5).tolist() == [
        [True, True, False, False, False], [True, True, True, True, False]]


def test_prefix_causal_mask():
    mask = prefix_causal_mask(2, 5)
    expected = torch.tensor([[1, 1, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert torch.equal(prefix_causal_mask(0, 4), causal_mask(4))
    assert prefix_causal_mask(4, 4).all()


# ---------------------------------------------------------------------------------------------
# MultiHeadAttention against nn.MultiheadAttention
# ---------------------------------------------------------------------------------------------

def _torch_mha(seed, dim, heads, **kwargs):
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(dim, heads, batch_first=True, **kwargs).double().eval()
    with torch.no_grad():  # non-zero biases, so a forgotten bias is caught
        for name, p in m.named_parameters():
            if "bias" in name:
                p.normal_()
    return m


@pytest.mark.parametrize("seed", range(12))
def test_from_torch_matches_nn_multihead_attention(seed):
    rng = random.Random(seed)
    heads = rng.choice([1, 2, 4])
    dim = heads * rng.randint(1, 6)
    B, L = rng.randint(1, 3), rng.randint(1, 7)
    cross = rng.random() < 0.4
    kdim = rng.randint(1, 10) if cross and rng.random() < 0.5 else None
    bias = rng.random() < 0.8
    m = _torch_mha(seed, dim, heads, bias=bias, kdim=kdim, vdim=kdim)
    ours = MultiHeadAttention.from_torch(m)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, dim, generator=g, dtype=torch.float64)
    S = rng.randint(1, 7) if cross else L
    context = torch.randn(B, S, kdim or dim, generator=g, dtype=torch.float64) if cross else None
    kv = context if cross else x
    # masks that leave every query at least one key (nn.MultiheadAttention gives NaN otherwise)
    lengths = torch.tensor([rng.randint(1, S) for _ in range(B)])
    kpm = ~padding_mask(lengths, S) if rng.random() < 0.6 else None  # True = padding
    allowed = (torch.rand(L, S, generator=g) < 0.6) | (torch.arange(S) == 0)
    mask_kind = rng.choice(["none", "bool", "float", "bool3d"])
    if mask_kind == "none":
        ours_mask = theirs_mask = None
    elif mask_kind == "bool":  # opposite conventions: theirs is True = masked out
        ours_mask, theirs_mask = allowed, ~allowed
    elif mask_kind == "float":
        ours_mask = theirs_mask = torch.randn(L, S, generator=g, dtype=torch.float64)
    else:  # nn.MultiheadAttention's (B*heads, L, S) is our (B, heads, L, S)
        per_head = (torch.rand(B, heads, L, S, generator=g) < 0.6) | (torch.arange(S) == 0)
        ours_mask, theirs_mask = per_head, ~per_head.reshape(B * heads, L, S)
    for average in (True, False):
        x1, x2 = leaf(x), leaf(x)
        ref, ref_w = m(x1, kv if cross else x1, kv if cross else x1, key_padding_mask=kpm,
                       attn_mask=theirs_mask, need_weights=True, average_attn_weights=average)
        out, w = ours(x2, context, key_padding_mask=kpm, attn_mask=ours_mask,
                      need_weights=True, average_attn_weights=average)
        assert_close(out, ref, f"output ({mask_kind}, kpm={kpm is not None})", 1e-12)
        assert_close(w, ref_w, f"weights (average={average})", 1e-12)
        grad = torch.randn_like(ref)
        ref.backward(grad)
        out.backward(grad)
        assert_close(x2.grad, x1.grad, "grad of x", 1e-12)
    ours.fused = True  # the fused kernel gives the same output
    assert_close(ours(x, context, key_padding_mask=kpm, attn_mask=ours_mask), ref.detach(), "fused", 1e-12)


def test_from_torch_causal_and_parameter_gradients():
    m = _torch_mha(0, 12, 3)
    ours = MultiHeadAttention.from_torch(m)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    ref, _ = m(x, x, x, attn_mask=~causal_mask(5), need_weights=False)
    out = ours(x, is_causal=True)
    assert_close(out, ref, "causal output", 1e-12)
    ref.sum().backward()
    out.sum().backward()
    wq, wk, wv = m.in_proj_weight.grad.chunk(3)
    for name, a, b in (("q", ours.q_proj.weight.grad, wq), ("k", ours.k_proj.weight.grad, wk),
                       ("v", ours.v_proj.weight.grad, wv),
                       ("out", ours.out_proj.weight.grad, m.out_proj.weight.grad)):
        assert_close(a, b, f"grad of {name} weight", 1e-12)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in m.parameters())


def test_fully_padded_sequence_gives_the_output_bias_not_nan():
    """Documented difference: nn.MultiheadAttention may return NaN here; we return out_proj(0)."""
    torch.manual_seed(5)
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    kpm = torch.zeros(2, 3, dtype=torch.bool)
    kpm[1] = True  # the second sequence is all padding
    for fused in (False, True):
        mha.fused = fused
        out = mha(x, key_padding_mask=kpm)
        assert torch.equal(out[1].detach(), mha.out_proj.bias.detach().expand(3, 8))
        assert_close(out[0], mha(x[:1])[0], "the other sequence is unaffected", 1e-6)
    _, w = mha(x, key_padding_mask=kpm, need_weights=True)
    assert (w[1] == 0).all() and torch.isfinite(w).all()


# ---------------------------------------------------------------------------------------------
# KV cache and the fused path
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [False, True], ids=["book", "fused"])
@pytest.mark.parametrize("chunks", [[1] * 7, [3, 1, 1, 2], [4, 3]])
def test_kv_cache_equals_full_recompute(chunks, fused):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, fused=fused).double().eval()
    x = torch.randn(2, sum(chunks), 16, dtype=torch.float64)
    full = mha(x, is_causal=True)
    cache, outs, start = KVCache(), [], 0
    for n in chunks:
        outs.append(mha(x[:, start:start + n], is_causal=True, cache=cache))
        start += n
        assert len(cache) == start
        assert cache.k.shape == (2, 4, start, 4)
    assert_close(torch.cat(outs, dim=1), full, "cached decoding vs one pass", 1e-12)
    cache.reset()
    assert len(cache) == 0 and cache.k is None


def test_kv_cache_with_prefix_mask_and_key_padding():
    """The first call may carry its own mask (a prefix-LM prompt); later ones are causal."""
    torch.manual_seed(1)
    mha = MultiHeadAttention(8, 2).double().eval()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    full = mha(x, attn_mask=prefix_causal_mask(3, 6), key_padding_mask=kpm)
    cache = KVCache()
    first = mha(x[:, :4], attn_mask=prefix_causal_mask(3, 4), cache=cache,
                key_padding_mask=kpm[:, :4])
    rest = [mha(x[:, i:i + 1], is_causal=True, cache=cache, key_padding_mask=kpm[:, :i + 1])
            for i in range(4, 6)]
    assert_close(torch.cat([first, *rest], dim=1), full, "prefix prompt then cached decoding", 1e-12)


def test_cross_attention_cache_reuses_the_context():
    torch.manual_seed(2)
    mha = MultiHeadAttention(8, 2, kdim=5, vdim=5).double().eval()
    x, context = torch.randn(2, 4, 8, dtype=torch.float64), torch.randn(2, 9, 5, dtype=torch.float64)
    full = mha(x, context)
    cache = KVCache()
    outs = [mha(x[:, :1], context, cache=cache)]
    assert len(cache) == 9 and cache.cross
    outs += [mha(x[:, i:i + 1], cache=cache) for i in range(1, 4)]  # context no longer needed
    assert len(cache) == 9
    assert_close(torch.cat(outs, dim=1), full, "cached cross-attention", 1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_fused_equals_book_path(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    mha = MultiHeadAttention(24, rng.choice([1, 2, 3, 6])).eval()
    B, L = 3, rng.randint(1, 9)
    x = torch.randn(B, L, 24)
    kwargs = rng.choice([{}, {"is_causal": True},
                         {"attn_mask": torch.rand(L, L) < 0.5, "is_causal": True},
                         {"key_padding_mask": ~padding_mask(torch.randint(1, L + 1, (B,)), L)},
                         {"attn_mask": torch.randn(L, L)}])
    book = mha(x, **kwargs)
    mha.fused = True
    assert_close(mha(x, **kwargs), book, f"fused vs book {sorted(kwargs)}", 2e-5)


def test_dropout_only_in_training():
    torch.manual_seed(3)
    mha = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 5, 8)
    a, b = mha(x), mha(x)
    assert not torch.allclose(a, b), "dropout in training mode should make runs differ"
    mha.eval()
    assert torch.equal(mha(x), mha(x))
    mha.train()
    torch.manual_seed(7)
    book = mha(x)
    mha.fused = True  # the fused CPU kernel draws its dropout mask like the book does
    torch.manual_seed(7)
    assert_close(mha(x), book, "fused vs book with dropout and the same seed", 2e-5)


def test_heads_are_independent_slices():
    """Changing head 1's value weights changes only head 1's slice before out_proj."""
    torch.manual_seed(4)
    mha = MultiHeadAttention(12, 3).double()
    x = torch.randn(1, 5, 12, dtype=torch.float64)
    captured = []
    hook = mha.out_proj.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
    mha(x)
    with torch.no_grad():
        mha.v_proj.weight[4:8] += 1.0  # rows 4..7 produce head 1's values
    mha(x)
    hook.remove()
    changed = (captured[0] - captured[1]).abs().amax(dim=(0, 1)) > 1e-9
    assert changed.tolist() == [False] * 4 + [True] * 4 + [False] * 4


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

def test_sdpa_bad_inputs_name_the_problem():
    q, k, v = _qkv(9, 2, 4, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="head dimension"):
        scaled_dot_product_attention(q, k[..., :6], v)
    with pytest.raises(ValueError, match="attn_mask of shape .* does not broadcast"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask of shape .* does not broadcast"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(5, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(4), is_causal=True)
    with pytest.raises(ValueError, match="v must have as many positions"):
        scaled_dot_product_attention(q, k, v[:, :3])
    with pytest.raises(TypeError, match="same dtype"):
        scaled_dot_product_attention(q, k.double(), v)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0])
    with pytest.raises(ValueError, match="dropout_p must be a probability"):
        scaled_dot_product_attention(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="batch dimensions"):
        scaled_dot_product_attention(q, torch.randn(3, 4, 8), torch.randn(3, 4, 8))
    with pytest.raises(ValueError, match="batch dimensions of v"):
        scaled_dot_product_attention(q, k, torch.randn(3, 4, 8))
    with pytest.raises(TypeError, match="floating-point"):
        attention_weights(q.long(), k.long())
    with pytest.raises(TypeError, match="q must be a tensor"):
        attention_weights([1.0], k)


def test_mask_helpers_bad_inputs():
    with pytest.raises(ValueError, match="L must be an int"):
        causal_mask(-1)
    with pytest.raises(ValueError, match="num_prefix must be at most L"):
        prefix_causal_mask(5, 4)
    with pytest.raises(ValueError, match="max_len=2 is shorter than the longest length 3"):
        padding_mask([3, 1], max_len=2)
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        padding_mask(torch.tensor([2, -1]))
    with pytest.raises(TypeError, match="lengths must be"):
        padding_mask([1.5, 2])


def test_multihead_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="dim must be divisible by num_heads.*dim=10.*num_heads=4"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="dropout must be a probability"):
        MultiHeadAttention(8, 2, dropout=2.0)
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"x must have shape \(B, length, 8\)"):
        mha(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, S\)"):
        mha(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask of shape .* does not broadcast"):
        mha(x, attn_mask=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="context has batch size 3"):
        mha(x, torch.randn(3, 5, 8))
    with pytest.raises(ValueError, match="self-attention needs kdim == vdim == dim"):
        MultiHeadAttention(8, 2, kdim=4, vdim=4)(x)
    with pytest.raises(ValueError, match="batch_first=True"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="add_bias_kv"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True))
    with pytest.raises(TypeError, match="must be an nn.MultiheadAttention"):
        MultiHeadAttention.from_torch(nn.Linear(8, 8))
    cache = KVCache()
    mha(x, cache=cache)
    with pytest.raises(ValueError, match="does not continue the cached"):
        cache.append(torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4))
    with pytest.raises(ValueError, match="needs its own KVCache"):
        mha(x, torch.randn(2, 3, 8), cache=cache)


def test_attention_checks_read_no_tensor_values():
    """The checks on the per-step path look at shapes and dtypes only. The meta device has no
    values, so a host sync there (``.item()``, ``bool(t)``, ``.nonzero()``) would raise."""
    with torch.device("meta"):
        mha = MultiHeadAttention(8, 2, dropout=0.1)  # training mode: dropout runs too
        x, context = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
        padding = torch.zeros(2, 5, dtype=torch.bool)
        assert mha(x, is_causal=True, key_padding_mask=padding).shape == (2, 5, 8)
        assert mha(x, attn_mask=torch.ones(5, 5, dtype=torch.bool)).shape == (2, 5, 8)
        assert mha(x, context, need_weights=True)[1].shape == (2, 5, 3)
        cache = KVCache()
        for t in range(3):
            assert mha(x[:, t:t + 1], is_causal=True, cache=cache).shape == (2, 1, 8)
        q = torch.randn(2, 4, 5, 8)
        assert scaled_dot_product_attention(q, q[:, :2], q[:, :2], is_causal=True, dropout_p=0.5,
                                            enable_gqa=True).shape == (2, 4, 5, 8)


def test_sdpa_checks_v_and_grouped_heads():
    q, k, v = _qkv(3, 2, 4, 5, 8, dtype=torch.float32)
    with pytest.raises(TypeError, match="q, k and v must have the same dtype"):
        scaled_dot_product_attention(q, k, v.double())
    with pytest.raises(TypeError, match="v must be a tensor"):
        scaled_dot_product_attention(q, k, v.tolist())
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of k's heads \(3\)"):
        scaled_dot_product_attention(q, k[:, :3], v[:, :3], enable_gqa=True)
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0], enable_gqa=True)
    with pytest.raises(TypeError, match="x must be a tensor"):
        MultiHeadAttention(8, 2)(x=[[0.0] * 8])
    with pytest.raises(ValueError, match="num_heads must be a positive int, got True"):
        MultiHeadAttention(8, True)
