"""Tests for ``mmgpt.fusion``: the pieces of the three fusion strategies.

* ``prefix_attention_mask`` against a mask built entry by entry from its definition, and
  against ``prefix_causal_mask`` when the image comes first; its three blocks;
* ``splice_image_tokens`` against a plain Python splice, for one placeholder (replaced by
  the image) and for ``N`` placeholders (filled in place), at random positions per row;
  the output indices; bad placeholder layouts;
* ``GatedCrossAttention``: closed gates add exactly nothing, open ones do; the KV cache of
  its cross-attention is computed once;
* each fusion module with a cache gives what it gives without, piece by piece.

The model built from these is tested in ``test_model.py``.
"""
from __future__ import annotations

import random

import pytest
import torch
from helpers import assert_close

from mmgpt.attention import prefix_causal_mask
from mmgpt.fusion import (CrossAttentionFusion, GatedCrossAttention, LateFusion, PrefixFusion,
                          prefix_attention_mask, splice_image_tokens)
from mmgpt.transformer import GPT, GPTConfig

SEEDS = range(6)


# ---------------------------------------------------------------------------------------------
# The prefix mask
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_prefix_mask_is_causal_or_image_to_image(seed):
    rng = random.Random(seed)
    B, L = rng.randint(1, 3), rng.randint(1, 12)
    is_image = torch.rand(B, L, generator=torch.Generator().manual_seed(seed)) < 0.4
    mask = prefix_attention_mask(is_image)
    assert mask.shape == (B, L, L) and mask.dtype == torch.bool
    for b in range(B):
        for i in range(L):
            for j in range(L):
                expected = j <= i or bool(is_image[b, i] and is_image[b, j])
                assert bool(mask[b, i, j]) == expected, (b, i, j)


@pytest.mark.parametrize("n, L", [(0, 5), (3, 8), (8, 8), (1, 1)])
def test_prefix_mask_with_the_image_first_is_the_prefix_lm_mask(n, L):
    is_image = torch.arange(L) < n
    assert torch.equal(prefix_attention_mask(is_image), prefix_causal_mask(n, L))


def test_prefix_mask_has_the_three_blocks():
    # <bos> | 4 image tokens | 3 text tokens
    is_image = torch.tensor([False, True, True, True, True, False, False, False])
    mask = prefix_attention_mask(is_image)
    img, text = slice(1, 5), slice(5, 8)
    assert mask[img, img].all()  # image <-> image: both directions
    assert mask[text, img].all()  # text -> image
    assert torch.equal(mask[text, text], torch.ones(3, 3, dtype=torch.bool).tril())  # causal
    assert not mask[img, text].any()  # the image never sees the text after it
    assert not mask[0, 1:].any() and mask[1:, 0].all()  # <bos> before the image: causal


def test_prefix_mask_rejects_a_non_boolean_marker():
    with pytest.raises(TypeError, match="is_image must be a boolean tensor"):
        prefix_attention_mask(torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------
# Splicing the image into the text
# ---------------------------------------------------------------------------------------------

def _splice_reference(text, image, positions, count):
    """Row by row, in Python: replace one placeholder, or fill N of them."""
    rows, indices = [], []
    N = image.shape[1]
    for b, p in enumerate(positions):
        if count == 1:
            rows.append(torch.cat([text[b, :p], image[b], text[b, p + 1:]]))
            indices.append([t if t < p else t + N - 1 for t in range(text.shape[1])])
        else:
            rows.append(torch.cat([text[b, :p], image[b], text[b, p + N:]]))
            indices.append(list(range(text.shape[1])))
    return torch.stack(rows), torch.tensor(indices)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("count", ["one", "N"])
def test_splice_matches_a_python_splice(seed, count):
    rng = random.Random(seed)
    B, N, D = rng.randint(1, 4), rng.randint(1, 5), rng.randint(1, 6)
    k = 1 if count == "one" else N
    T = k + rng.randint(0, 6)
    positions = [rng.randint(0, T - k) for _ in range(B)]
    placeholder = torch.zeros(B, T, dtype=torch.bool)
    for b, p in enumerate(positions):
        placeholder[b, p:p + k] = True
    text = torch.randn(B, T, D, dtype=torch.float64)
    image = torch.randn(B, N, D, dtype=torch.float64)
    x, is_image, text_index = splice_image_tokens(text, image, placeholder)
    expected, expected_index = _splice_reference(text, image, positions, k)
    assert torch.equal(x, expected)
    assert torch.equal(text_index, expected_index)
    for b, p in enumerate(positions):
        assert is_image[b].nonzero().flatten().tolist() == list(range(p, p + N))
    # Text tokens are read back where they went; a single placeholder reads the last image token.
    gathered = x.gather(1, text_index[..., None].expand(-1, -1, D))
    keep = ~placeholder
    assert torch.equal(gathered[keep], text[keep])
    if k == 1:
        assert torch.equal(gathered[placeholder], image[:, -1])


@pytest.mark.parametrize("rows, match", [
    ([[0, 1, 0, 0], [0, 1, 1, 0]], "once or N=3 times"),  # rows differ
    ([[0, 1, 1, 0], [0, 1, 1, 0]], "once or N=3 times"),  # 2 of 3
    ([[1, 0, 1, 1], [1, 1, 1, 0]], "next to each other"),  # three, but apart
])
def test_splice_rejects_bad_placeholder_layouts(rows, match):
    placeholder = torch.tensor(rows, dtype=torch.bool)
    with pytest.raises(ValueError, match=match):
        splice_image_tokens(torch.zeros(2, 4, 5), torch.zeros(2, 3, 5), placeholder)


# ---------------------------------------------------------------------------------------------
# Gated cross-attention
# ---------------------------------------------------------------------------------------------

def test_closed_gates_add_exactly_nothing_and_open_gates_do():
    torch.manual_seed(0)
    layer = GatedCrossAttention(16, 4)
    x, image = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    assert torch.equal(layer(x, image), x)
    with torch.no_grad():
        layer.attn_gate.fill_(0.5)
    opened = layer(x, image)
    assert (opened - x).abs().max() > 1e-3
    with torch.no_grad():  # the attention half alone: x + tanh(0.5) * attn(ln(x), image)
        expected = x + torch.tanh(torch.tensor(0.5)) * layer.attn(layer.ln_1(x), image)
    assert_close(opened, expected, "gated output", 1e-6)


def test_closed_gates_still_get_a_gradient():
    torch.manual_seed(0)
    layer = GatedCrossAttention(8, 2)
    layer(torch.randn(2, 3, 8), torch.randn(2, 4, 8)).pow(2).sum().backward()
    assert layer.attn_gate.grad.abs().item() > 0 and layer.mlp_gate.grad.abs().item() > 0
    assert layer.attn.q_proj.weight.grad.abs().max().item() == 0  # nothing flows past a 0 gate


# ---------------------------------------------------------------------------------------------
# The fusions with and without a cache
# ---------------------------------------------------------------------------------------------

def _decoder(positions: int) -> GPT:
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=50, context_length=positions, dim=16, num_layers=3,
                         num_heads=2)).eval()


@pytest.mark.parametrize("name", ["prefix", "cross", "late"])
def test_a_fusion_fed_piece_by_piece_equals_one_pass(name):
    torch.manual_seed(0)
    B, T, N, image_id = 2, 9, 4, 49
    fusion = {"prefix": PrefixFusion(image_id),
              "cross": CrossAttentionFusion(16, 2, 3, every=2),
              "late": LateFusion()}[name]
    if name == "cross":  # open the gates, or the image would not matter
        with torch.no_grad():
            for layer in fusion.layers:
                layer.attn_gate.fill_(1.0)
                layer.mlp_gate.fill_(-0.7)
    decoder = _decoder(fusion.num_positions(T, N))
    ids = torch.randint(0, 40, (B, T))
    ids[:, 1] = image_id
    image = torch.randn(B, N, 16)
    with torch.no_grad():
        full = fusion(decoder, image, ids)
        cache = fusion.new_cache(decoder)
        pieces = [fusion(decoder, image, ids[:, :4], cache)]
        pieces += [fusion(decoder, image, ids[:, t:t + 1], cache) for t in range(4, T)]
    assert full.shape == (B, T, 16)
    assert_close(torch.cat(pieces, dim=1), full, f"{name}: cached pieces vs one pass", 1e-5)
    assert len(cache) == (T + N - 1 if name == "prefix" else T)  # positions read


def test_prefix_fusion_refuses_a_placeholder_after_the_cached_prompt():
    fusion = PrefixFusion(49)
    decoder = _decoder(fusion.num_positions(8, 3))
    cache = fusion.new_cache(decoder)
    image = torch.randn(1, 3, 16)
    fusion(decoder, image, torch.tensor([[1, 49, 2]]), cache)
    with pytest.raises(ValueError, match="already read into the cache"):
        fusion(decoder, image, torch.tensor([[49]]), cache)
