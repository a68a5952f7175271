"""Tests for ``mmgpt.transformer``: the decoder's parts against PyTorch, and generation.

* ``layer_norm`` / ``LayerNorm`` against ``F.layer_norm`` / ``nn.LayerNorm`` over seeded random
  shapes, ``eps`` and affine options, forward and backward in float64; state dicts interchange;
* ``MLP``: shapes, the default hidden size, what it computes; ``Block``: pre-norm (identity when
  its branches are zeroed) and causal;
* ``GPT``: shapes, the loss equals ``F.cross_entropy`` on the flattened logits, tied weights are
  one tensor, causality, the context limit raises ``ValueError`` naming both numbers;
* the KV cache: logits at every generation step equal a full recomputation (float64), greedy
  and seeded sampling give identical tokens with and without the cache, also past the context;
* ``sample_next`` / ``filter_logits``: ``temperature=0`` is the arg-max, ``top_k=1`` is greedy,
  top-p keeps the smallest set with mass >= p (hand-made distributions), sampling frequencies
  follow ``softmax(logits / T)``, a seeded generator is deterministic;
* bad arguments raise ``ValueError``/``TypeError`` naming the argument.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_close, leaf
from mmgpt.transformer import (GPT, MLP, Block, GPTConfig, LayerNorm, filter_logits,
                               layer_norm, sample_next)

DTYPE = torch.float64
ATOL = 1e-12  # float64 round-off here is ~1e-15; a wrong mean/variance is O(0.01) or more


def _tiny(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=37, context_length=24, dim=32, num_layers=2, num_heads=4)
    config.update(overrides)
    return GPT(GPTConfig(**config))


# ---------------------------------------------------------------------------------------------
# Layer norm
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(24))
def test_layer_norm_matches_pytorch_forward_and_backward(seed):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    normalized = tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3)))
    leading = tuple(rng.randint(1, 4) for _ in range(rng.randint(0, 2)))
    eps = rng.choice([1e-5, 1e-3, 0.1, 0.0])
    affine, bias = rng.random() < 0.75, rng.random() < 0.75
    # a large offset checks that the mean is removed before the variance is taken
    x = torch.randn(*leading, *normalized, generator=g, dtype=DTYPE) * 3 + rng.uniform(-5, 5)
    if eps == 0.0 and math.prod(normalized) == 1:
        eps = 1e-5  # var = 0 and eps = 0 divide by zero in both implementations
    ours = LayerNorm(normalized, eps=eps, elementwise_affine=affine, bias=bias, dtype=DTYPE)
    ref = nn.LayerNorm(normalized, eps=eps, elementwise_affine=affine, bias=bias, dtype=DTYPE)
    if affine:  # random parameters, the same in both
        with torch.no_grad():
            ref.weight.copy_(torch.randn(normalized, generator=g, dtype=DTYPE))
            if bias:
                ref.bias.copy_(torch.randn(normalized, generator=g, dtype=DTYPE))
    ours.load_state_dict(ref.state_dict())  # strict: same parameter names and shapes
    xo, xr = leaf(x), leaf(x)
    yo, yr = ours(xo), ref(xr)
    assert_close(yo, yr, "output", ATOL)
    upstream = torch.randn(yr.shape, generator=g, dtype=DTYPE)
    (yo * upstream).sum().backward()
    (yr * upstream).sum().backward()
    assert_close(xo.grad, xr.grad, "grad x", 1e-10)
    for name, p in ref.named_parameters():
        assert_close(dict(ours.named_parameters())[name].grad, p.grad, f"grad {name}", 1e-10)
    # the functional form, against F.layer_norm
    w = ref.weight.detach() if affine else None
    b = ref.bias.detach() if affine and bias else None
    assert_close(layer_norm(x, normalized, w, b, eps), F.layer_norm(x, normalized, w, b, eps),
                 "layer_norm", ATOL)


def test_layer_norm_normalizes_and_handles_float32_and_constant_rows():
    x = torch.randn(5, 7, 16) * 4 + 3
    y = LayerNorm(16)(x)
    assert_close(y.mean(-1), torch.zeros(5, 7), "row means", 1e-5)
    assert_close(y.var(-1, unbiased=False), torch.ones(5, 7), "row variances", 1e-3)
    assert_close(y, F.layer_norm(x, (16,)), "float32 vs F.layer_norm", 1e-5)
    constant = torch.full((2, 8), 3.0)  # variance 0: the output is the bias
    w, b = torch.randn(8), torch.randn(8)
    assert_close(layer_norm(constant, 8, w, b), b.expand(2, 8), "constant rows", 0.0)
    assert_close(layer_norm(constant, 8, w, b), F.layer_norm(constant, (8,), w, b),
                 "constant rows vs F.layer_norm", 0.0)


def test_layer_norm_module_mirrors_nn_layernorm():
    ours, ref = LayerNorm(12), nn.LayerNorm(12)
    assert ours.normalized_shape == ref.normalized_shape == (12,)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)
    assert LayerNorm(12, bias=False).bias is None
    assert list(LayerNorm(12, elementwise_affine=False).parameters()) == []
    ref.load_state_dict(LayerNorm(12).state_dict())


def test_layer_norm_bad_arguments():
    with pytest.raises(ValueError, match=r"normalized_shape=\[8\].*\(2, 3, 5\)"):
        layer_norm(torch.randn(2, 3, 5), 8)
    with pytest.raises(ValueError, match=r"weight must have shape normalized_shape"):
        layer_norm(torch.randn(2, 5), 5, weight=torch.ones(4))
    with pytest.raises(ValueError, match=r"bias must have shape normalized_shape"):
        layer_norm(torch.randn(2, 5), 5, bias=torch.ones(5, 1))
    with pytest.raises(ValueError, match="eps"):
        layer_norm(torch.randn(2, 5), 5, eps=-1.0)
    with pytest.raises(TypeError, match="normalized_shape"):
        LayerNorm(0)
    with pytest.raises(TypeError, match="normalized_shape"):
        LayerNorm("8")
    with pytest.raises(TypeError, match="x must be a tensor"):
        layer_norm([1.0, 2.0], 2)


# ---------------------------------------------------------------------------------------------
# MLP and block
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim,hidden", [(8, None), (16, 24), (5, 1)])
def test_mlp_shapes_and_what_it_computes(dim, hidden):
    torch.manual_seed(dim)
    mlp = MLP(dim, hidden).double()
    h = 4 * dim if hidden is None else hidden
    assert mlp.fc.weight.shape == (h, dim) and mlp.proj.weight.shape == (dim, h)
    assert sum(p.numel() for p in mlp.parameters()) == 2 * dim * h + h + dim
    x = torch.randn(3, 7, dim, dtype=DTYPE)
    y = mlp(x)
    assert y.shape == x.shape
    expected = F.gelu(x @ mlp.fc.weight.T + mlp.fc.bias) @ mlp.proj.weight.T + mlp.proj.bias
    assert_close(y, expected, "MLP", ATOL)
    # position-wise: every position is transformed on its own
    assert_close(mlp(x[:, 3:4]), y[:, 3:4], "one position alone", ATOL)


def test_mlp_dropout_only_in_training():
    torch.manual_seed(0)
    mlp = MLP(8, dropout=0.5)
    x = torch.randn(4, 8)
    mlp.eval()
    assert torch.equal(mlp(x), mlp(x))
    mlp.train()
    assert (mlp(x) == 0).any()
    with pytest.raises(ValueError, match="dropout"):
        MLP(8, dropout=1.0)
    with pytest.raises(ValueError, match="hidden"):
        MLP(8, hidden=0)


def test_block_is_pre_norm_residual_and_causal():
    torch.manual_seed(0)
    block = Block(16, 4).double()
    x = torch.randn(2, 9, 16, dtype=DTYPE)
    y = block(x, is_causal=True)
    assert y.shape == x.shape
    # changing a later token leaves earlier outputs alone
    x2 = x.clone()
    x2[:, 6:] += torch.randn(2, 3, 16, dtype=DTYPE)
    y2 = block(x2, is_causal=True)
    assert_close(y2[:, :6], y[:, :6], "causal: outputs before the change", ATOL)
    assert not torch.allclose(y2[:, 6:], y[:, 6:])
    # pre-norm: with both branches' output projections at zero the block is the identity
    # (a post-norm block would still normalize x)
    with torch.no_grad():
        for linear in (block.mlp.proj, block.attn.out_proj):
            linear.weight.zero_()
            linear.bias.zero_()
    assert_close(block(x * 10 + 3, is_causal=True), x * 10 + 3, "identity", ATOL)


# ---------------------------------------------------------------------------------------------
# GPT
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [False, True])
def test_gpt_shapes_loss_and_initial_loss(fused):
    model = _tiny(fused=fused)
    idx = torch.randint(37, (3, 11), generator=torch.Generator().manual_seed(1))
    logits, loss = model(idx)
    assert logits.shape == (3, 11, 37) and loss is None
    targets = torch.roll(idx, -1, dims=1)
    targets[:, -1] = -100  # nothing to predict after the last token
    targets[0, :4] = -100
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits.reshape(-1, 37), targets.reshape(-1), ignore_index=-100)
    assert_close(loss, expected, "loss vs F.cross_entropy", 1e-6)
    # small random init: predictions start close to uniform, loss close to ln(vocab)
    assert abs(loss.item() - math.log(37)) < 0.1
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gpt_tied_weights_are_one_tensor():
    model = _tiny()
    assert model.head.weight is model.tok_emb.weight
    assert model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    untied = _tiny(tie_weights=False)
    assert untied.head.weight is not untied.tok_emb.weight
    assert model.num_parameters() == untied.num_parameters() - 37 * 32
    assert model.num_parameters() == sum(p.numel() for p in set(model.parameters()))
    # a change to the embedding is a change to the head, and both uses add to one gradient
    idx = torch.randint(37, (2, 6))
    logits, _ = model(idx)
    logits.sum().backward()
    assert model.head.weight.grad is model.tok_emb.weight.grad
    with torch.no_grad():
        model.tok_emb.weight[5] += 1.0
    assert torch.equal(model.head.weight[5], model.tok_emb.weight[5])
    # a round trip through the state dict keeps the tie
    copy = GPT(model.config)
    copy.load_state_dict(model.state_dict())
    assert copy.head.weight is copy.tok_emb.weight
    assert torch.equal(copy(idx)[0], model(idx)[0])
    non_embedding = model.num_parameters(non_embedding=True)
    assert non_embedding == model.num_parameters() - 37 * 32 - 24 * 32


def test_gpt_is_causal():
    model = _tiny().double()
    idx = torch.randint(37, (2, 15), generator=torch.Generator().manual_seed(3))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 37
    a, b = model(idx)[0], model(changed)[0]
    assert_close(a[:, :9], b[:, :9], "logits before the change", ATOL)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_context_limit_raises_naming_both_numbers():
    model = _tiny()  # context_length 24
    model(torch.zeros(1, 24, dtype=torch.long))  # exactly the limit is fine
    with pytest.raises(ValueError, match=r"25 tokens.*context_length=24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    caches = model.new_caches()
    model(torch.zeros(1, 20, dtype=torch.long), caches=caches)
    with pytest.raises(ValueError, match=r"26 tokens \(6 new \+ 20 cached\).*context_length=24"):
        model(torch.zeros(1, 6, dtype=torch.long), caches=caches)


def test_gpt_bad_inputs():
    model = _tiny()
    with pytest.raises(TypeError, match="idx must hold integer"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="idx must be 2-D"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have idx's shape"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="one KVCache per block"):
        model(torch.zeros(1, 4, dtype=torch.long), caches=model.new_caches()[:1])
    with pytest.raises(ValueError, match=r"dim=30 and num_heads=4"):
        GPTConfig(vocab_size=10, dim=30, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), -1)


# ---------------------------------------------------------------------------------------------
# KV cache = full recomputation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_kv_cache_logits_equal_full_recompute_at_every_step(seed):
    rng = random.Random(seed)
    model = _tiny(seed, num_layers=rng.randint(1, 3), num_heads=rng.choice([1, 2, 4]),
                  fused=rng.random() < 0.5).double().eval()
    g = torch.Generator().manual_seed(seed)
    B, prompt_len = rng.randint(1, 3), rng.randint(1, 6)
    seq = torch.randint(37, (B, prompt_len), generator=g)
    caches = model.new_caches()
    logits, _ = model(seq, caches=caches)  # prefill
    for step in range(12):  # greedy decoding, one token at a time through the cache
        full, _ = model(seq)
        assert_close(logits, full[:, -logits.shape[1]:], f"step {step}", 1e-10)
        next_id = logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, next_id], dim=1)
        logits, _ = model(next_id, caches=caches)
        assert len(caches[0]) == seq.shape[1]
    # feeding in chunks of several tokens at once gives the same logits too
    caches = model.new_caches()
    chunks = [model(seq[:, a:b], caches=caches)[0] for a, b in [(0, 3), (3, 4), (4, 11), (11, None)]]
    assert_close(torch.cat(chunks, dim=1), model(seq)[0], "chunked", 1e-10)


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, top_k=5),
                                      dict(temperature=0.8, top_p=0.9)], ids=["greedy", "top_k", "top_p"])
@pytest.mark.parametrize("new_tokens", [10, 40])  # 40 runs past the context of 24
def test_generate_with_and_without_cache_gives_identical_tokens(sampling, new_tokens):
    model = _tiny(1).double()
    prompt = torch.randint(37, (2, 5), generator=torch.Generator().manual_seed(7))
    out = [model.generate(prompt, new_tokens, use_cache=use_cache,
                          generator=torch.Generator().manual_seed(11), **sampling)
           for use_cache in (True, False)]
    assert out[0].shape == (2, 5 + new_tokens)
    assert torch.equal(out[0][:, :5], prompt)
    assert torch.equal(out[0], out[1])


def test_generate_greedy_equals_a_hand_written_loop_and_crops_long_prompts():
    model = _tiny(2)
    prompt = torch.randint(37, (1, 30), generator=torch.Generator().manual_seed(0))  # > 24
    seq = prompt
    for _ in range(6):
        logits, _ = model(seq[:, -24:])
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(prompt, 6, temperature=0), seq)


def test_generate_eos_restores_mode_and_is_deterministic():
    model = _tiny(3, dropout=0.2)
    model.train()
    prompt = torch.randint(37, (2, 4), generator=torch.Generator().manual_seed(5))
    free = model.generate(prompt, 12, temperature=0)
    assert model.training  # put back in training mode
    assert torch.equal(free, model.generate(prompt, 12, temperature=0))  # no dropout inside
    eos = int(free[0, 4 + 2])  # row 0 produces this token at its 3rd step
    out = model.generate(prompt, 12, temperature=0, eos_id=eos)
    first = [int((row[4:] == eos).nonzero()[0]) if (row[4:] == eos).any() else None for row in out]
    assert first[0] is not None and first[0] <= 2
    for row, f in zip(out, first):
        if f is not None:  # everything after a row's first eos is eos
            assert (row[4 + f:] == eos).all()
    if all(f is not None for f in first):  # stopped as soon as every row had finished
        assert out.shape[1] == 4 + max(first) + 1
    else:
        assert out.shape[1] == 4 + 12


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

def _kept(logits: torch.Tensor, **kwargs) -> list[int]:
    return torch.isfinite(filter_logits(logits, **kwargs)).nonzero().flatten().tolist()


def test_temperature_zero_is_argmax_and_top_k_one_is_greedy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g)
    greedy = sample_next(logits, temperature=0)
    assert torch.equal(greedy, logits.argmax(-1))
    for temperature in (0.5, 1.0, 3.0):
        for seed in range(3):
            ids = sample_next(logits, temperature, top_k=1, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(ids, greedy)
    # on a tie greedy takes the first maximum
    assert sample_next(torch.tensor([1.0, 3.0, 3.0, 0.0]), temperature=0).item() == 1


def test_top_p_keeps_the_smallest_set_with_mass_at_least_p():
    probs = torch.tensor([0.0625, 0.5, 0.125, 0.0625, 0.25], dtype=DTYPE)  # exact in binary
    logits = probs.log()  # ranked: 1 (0.5), 4 (0.25), 2 (0.125), then 0 and 3 (0.0625 each)
    assert _kept(logits, top_p=0.3) == [1]
    assert _kept(logits, top_p=0.5) == [1]  # 0.5 already reaches p
    assert _kept(logits, top_p=0.51) == [1, 4]
    assert _kept(logits, top_p=0.75) == [1, 4]
    assert _kept(logits, top_p=0.8) == [1, 2, 4]
    assert _kept(logits, top_p=0.9) == [0, 1, 2, 4]  # the tie goes to the earlier index
    assert _kept(logits, top_p=1.0) == [0, 1, 2, 3, 4]
    # the most likely token always stays, however small p
    assert _kept(torch.tensor([0.0, 0.0, 5.0]), top_p=1e-9) == [2]
    # rows are filtered independently
    two = torch.stack([logits, logits.flip(0)])
    kept = torch.isfinite(filter_logits(two, top_p=0.75))
    assert kept[0].nonzero().flatten().tolist() == [1, 4]
    assert kept[1].nonzero().flatten().tolist() == [0, 3]
    # and sampling never leaves the nucleus
    ids = sample_next(logits.expand(4000, 5), top_p=0.8, generator=torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == {1, 2, 4}


def test_top_k_keeps_exactly_k_and_composes_with_top_p():
    logits = torch.tensor([0.1, 2.0, -1.0, 3.0, 0.5, 1.0])
    assert _kept(logits, top_k=1) == [3]
    assert _kept(logits, top_k=3) == [1, 3, 5]
    assert _kept(logits, top_k=6) == _kept(logits, top_k=100) == list(range(6))
    # top-p renormalizes what top-k left: among {3, 1} the best has ~73% of the mass
    assert _kept(logits, top_k=2, top_p=0.7) == [3]
    assert _kept(logits, top_k=2, top_p=0.8) == [1, 3]
    ids = sample_next(logits.expand(3000, 6), top_k=3, generator=torch.Generator().manual_seed(1))
    assert set(ids.tolist()) == {1, 3, 5}


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampling_frequencies_follow_the_tempered_softmax(temperature):
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    n = 40_000
    ids = sample_next(logits.expand(n, 5), temperature, generator=torch.Generator().manual_seed(2))
    freq = torch.bincount(ids, minlength=5).double() / n
    expected = (logits.double() / temperature).softmax(-1)
    # standard error is at most 0.0025 here; 0.012 is ~5 of them
    assert (freq - expected).abs().max() < 0.012, (freq, expected)


def test_sampling_is_deterministic_with_a_generator_and_keeps_shapes():
    logits = torch.randn(3, 4, 20, generator=torch.Generator().manual_seed(0))
    a = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(5))
    b = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(5))
    c = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(6))
    assert a.shape == (3, 4) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sample_next(torch.randn(20), 0.7).shape == ()
    # a banned token (-inf) is never drawn
    banned = torch.zeros(1000, 3)
    banned[:, 1] = float("-inf")
    assert 1 not in sample_next(banned, generator=torch.Generator().manual_seed(0)).tolist()


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-0.1), r"temperature must be a finite number >= 0.*-0\.1"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), r"top_p must be None or a number in \(0, 1\], got 0\.0"),
    (dict(top_p=1.5), r"top_p .* got 1\.5"),
    (dict(top_p=-0.2), "top_p"),
    (dict(top_k=0), r"top_k must be None or an int >= 1, got 0"),
    (dict(top_k=-3), "top_k"),
    (dict(top_k=2.5), "top_k"),
])
def test_bad_sampling_arguments_raise(kwargs, match):
    logits = torch.randn(2, 10)
    with pytest.raises(ValueError, match=match):
        sample_next(logits, **kwargs)
    with pytest.raises(ValueError, match=match):  # checked before any work is done
        _tiny().generate(torch.zeros(1, 2, dtype=torch.long), 5, **kwargs)


def test_bad_logits_raise():
    with pytest.raises(TypeError, match="logits must be floating point"):
        sample_next(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="NaN"):
        sample_next(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="row of -inf"):
        sample_next(torch.full((2, 3), float("-inf")))


# ---------------------------------------------------------------------------------------------
# The decoder's stages, as the fusions call them
# ---------------------------------------------------------------------------------------------

def test_forward_is_embed_then_run_blocks_then_logits():
    model = _tiny(num_layers=3).eval()
    idx = torch.randint(0, 37, (2, 11), generator=torch.Generator().manual_seed(0))
    logits, _ = model(idx)
    assert torch.equal(model.logits(model.run_blocks(model.embed(idx))), logits)
    # the blocks in pieces (as cross-attention fusion runs them) are the blocks at once
    x = model.embed(idx)
    pieces = model.run_blocks(model.run_blocks(x, start=0, stop=2), start=2)
    assert torch.equal(pieces, model.run_blocks(x))
    # with caches: a prompt, then one token at a time
    caches = model.new_caches()
    steps = [model.run_blocks(model.embed(idx[:, :6]), caches=caches)]
    steps += [model.run_blocks(model.embed(idx[:, t:t + 1], past=t), caches=caches)
              for t in range(6, 11)]
    assert_close(model.logits(torch.cat(steps, dim=1)), logits, "cached stages", 1e-5)


def test_add_positions_refuses_positions_past_the_table():
    model = _tiny()  # 24 positions
    with pytest.raises(ValueError, match="reach position 25, past the model's 24 position"):
        model.embed(torch.zeros(1, 5, dtype=torch.long), past=20)
