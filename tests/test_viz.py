"""Tests for ``mmgpt.viz``: the tools of Chapter 12 against direct computations.

* ``attention_rollout`` against the product of ``(A + I) / 2`` written out by hand (and the
  plain product without the residual), over random seeds, layers and batch shapes;
* ``attention_maps`` / ``capture_attention`` on a small prefix-fusion model: every row a
  distribution, zero where the mask forbids, layer 0 equal to ``softmax(q kᵀ/√d + mask)``
  computed with PyTorch from the model's own projections, the same weights from the fused
  and the book's kernels, the model's outputs unchanged, hooks removed afterwards;
* ``object_mask`` / ``token_coverage`` / ``object_share`` on hand-built scenes whose
  pixels are known exactly;
* ``confusion_matrix`` against ``sklearn.metrics.confusion_matrix``;
* ``answer_questions`` against one ``generate`` call per sample;
* bad inputs raise ``ValueError``/``TypeError``/``RuntimeError`` naming the argument.
"""
from __future__ import annotations

import math
import random

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from helpers import assert_close  # noqa: E402
from sklearn.metrics import confusion_matrix as sk_confusion_matrix  # noqa: E402

from mmgpt import viz  # noqa: E402
from mmgpt.data import ShapesDataset, caption_corpus, make_collate  # noqa: E402
from mmgpt.data.shapes import ShapeObject  # noqa: E402
from mmgpt.fusion import prefix_attention_mask, splice_image_tokens  # noqa: E402
from mmgpt.model import MultimodalGPT, MultimodalGPTConfig  # noqa: E402
from mmgpt.tokenizer import BPETokenizer  # noqa: E402

ERRORS = (ValueError, TypeError)


def _random_attention(shape, generator):
    return torch.randn(*shape, generator=generator, dtype=torch.float64).softmax(-1)


# --------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_rollout_equals_the_product_by_hand(seed):
    g = torch.Generator().manual_seed(seed)
    layers, L = 1 + seed % 4, 2 + seed
    batch = [(), (3,), (2, 2)][seed % 3]
    A = _random_attention((layers, *batch, L, L), g)
    eye = torch.eye(L, dtype=torch.float64)
    expected = eye.expand(*batch, L, L)
    plain = eye.expand(*batch, L, L)
    for layer in range(layers):  # layer 0 acts first: rollout = Â_{n-1} ... Â_1 Â_0
        expected = (0.5 * A[layer] + 0.5 * eye) @ expected
        plain = A[layer] @ plain
    assert_close(viz.attention_rollout(A), expected, "rollout", 1e-12)
    assert_close(viz.attention_rollout(A, residual=False), plain, "plain rollout", 1e-12)
    assert_close(viz.attention_rollout(A).sum(-1), torch.ones(*batch, L, dtype=torch.float64),
                 "rollout row sums", 1e-12)


def test_rollout_of_one_tiny_case_by_hand():
    # Two tokens; layer 0: token 1 looks only at token 0; layer 1: both look at themselves.
    a0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    a1 = torch.eye(2)
    got = viz.attention_rollout(torch.stack([a0, a1]))
    # (A1+I)/2 = I; (A0+I)/2 = [[1, 0], [0.5, 0.5]]
    assert torch.equal(got, torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


@pytest.mark.parametrize("bad, match", [
    (torch.ones(2, 3, 4) / 4, "square"),
    (torch.ones(3, 3) / 3, r"\(layers, \.\.\., L, L\)"),
    (torch.ones(2, 3, 3, dtype=torch.long), "float"),
    (torch.ones(2, 3, 3), "sum to 1"),
    (torch.tensor([[[1.5, -0.5], [0.5, 0.5]]]), "non-negative"),
])
def test_rollout_rejects_bad_attentions(bad, match):
    with pytest.raises(ValueError, match=f"attentions.*{match}|{match}"):
        viz.attention_rollout(bad)


# --------------------------------------------------------------------------------------
# Attention maps of a real model
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    tokenizer = BPETokenizer.train(caption_corpus(n=300, seed=0), vocab_size=320)
    torch.manual_seed(0)
    config = MultimodalGPTConfig.for_tokenizer(tokenizer, dim=16, num_layers=2, num_heads=2,
                                               fused=False)
    model = MultimodalGPT(config).eval()
    ds = ShapesDataset("test", 6, families=("color", "shape"))
    samples = [ds[i] for i in range(6)]
    batch = make_collate(tokenizer)(samples)
    return tokenizer, model, samples, batch


def test_attention_maps_are_distributions_that_respect_the_mask(tiny):
    _, model, _, batch = tiny
    maps = viz.attention_maps(model, batch["images"], batch["input_ids"])
    B, T = batch["input_ids"].shape
    N = model.num_image_tokens
    L = T + N - 1
    assert maps.weights.shape == (2, B, 2, L, L)
    assert_close(maps.weights.sum(-1), torch.ones(2, B, 2, L), "row sums", 1e-5)
    allowed = prefix_attention_mask(maps.is_image)[None, :, None]  # (1, B, 1, L, L)
    assert bool((maps.weights.masked_select(~allowed.expand_as(maps.weights)) == 0).all())
    assert maps.num_image_tokens == N and bool((maps.is_image.sum(1) == N).all())


def test_layer0_weights_equal_softmax_of_the_scores(tiny):
    _, model, _, batch = tiny
    maps = viz.attention_maps(model, batch["images"], batch["input_ids"])
    dec, ids = model.decoder, batch["input_ids"]
    with torch.no_grad():  # the first block's input, rebuilt by hand
        x, is_image, _ = splice_image_tokens(dec.tok_emb(ids), model.encode_images(
            batch["images"]), ids == model.config.image_token_id)
        x = x + dec.pos_emb(torch.arange(x.shape[1]))
        attn = dec.blocks[0].attn
        h = dec.blocks[0].ln_1(x)
        q, k = attn.split_heads(attn.q_proj(h)), attn.split_heads(attn.k_proj(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
        mask = prefix_attention_mask(is_image)[:, None]
        expected = F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    assert_close(maps.weights[0], expected, "layer 0 weights", 1e-6)


def test_capture_leaves_outputs_alone_and_fused_kernels_agree(tiny):
    _, model, _, batch = tiny
    with torch.no_grad():
        before, _ = model(batch["images"], batch["input_ids"])
        with viz.capture_attention(model) as captured:
            during, _ = model(batch["images"], batch["input_ids"])
        after, _ = model(batch["images"], batch["input_ids"])
    assert len(captured) == 2 and torch.equal(before, during) and torch.equal(before, after)
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed
    fused = MultimodalGPT(MultimodalGPTConfig(**dict(vars(model.config), fused=True))).eval()
    fused.load_state_dict(model.state_dict())
    a = viz.attention_maps(model, batch["images"], batch["input_ids"]).weights
    b = viz.attention_maps(fused, batch["images"], batch["input_ids"]).weights
    assert_close(b, a, "fused vs book weights", 1e-5)


def test_image_attention_rows_are_the_right_slices(tiny):
    _, model, _, batch = tiny
    maps = viz.attention_maps(model, batch["images"], batch["input_ids"])
    sep = batch["prompt_lengths"] - 1
    got = maps.image_attention(sep)
    rolled = maps.rollout_image_attention(sep)
    N = model.num_image_tokens
    for b in range(len(sep)):
        p = int((batch["input_ids"][b] == model.config.image_token_id).nonzero())
        query = int(sep[b]) + N - 1  # the text after the image moved N - 1 places
        assert torch.equal(got[:, b], maps.weights[:, b, :, query, p:p + N])
        assert torch.equal(rolled[b], maps.rollout()[b, query, p:p + N])
    with pytest.raises(ValueError, match="text_positions"):
        maps.image_attention(sep[:2])


def test_capture_refuses_the_kv_cache_and_non_attention(tiny):
    tokenizer, model, samples, batch = tiny
    prompt = batch["input_ids"][:1, : int(batch["prompt_lengths"][0])]
    with viz.capture_attention(model):
        with pytest.raises(RuntimeError, match="KV cache"):
            model.generate(batch["images"][:1], prompt, 2, temperature=0)
    with pytest.raises(TypeError, match="modules"):
        with viz.capture_attention(torch.nn.Linear(2, 2)):
            pass
    cross = MultimodalGPT(MultimodalGPTConfig(**dict(vars(model.config), fusion="cross")))
    with pytest.raises(ValueError, match="prefix fusion"):
        viz.attention_maps(cross, batch["images"], batch["input_ids"])


# --------------------------------------------------------------------------------------
# Objects, coverage, share
# --------------------------------------------------------------------------------------

def test_object_mask_of_a_square_is_its_box():
    obj = ShapeObject("red", "square", 10.5, 20.5, 4.5)  # centre pixel (10, 20), half-side 4
    mask = viz.object_mask(obj, 32)
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[16:25, 6:15] = True  # rows y-4..y+4, columns x-4..x+4
    assert torch.equal(mask, expected)
    circle = viz.object_mask(ShapeObject("blue", "circle", 10.5, 20.5, 4.5), 32)
    assert bool((circle <= expected).all()) and 40 < int(circle.sum()) < 81


def test_token_coverage_on_hand_built_cells():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[0:8, 8:16] = True  # exactly cell (0, 1) of a 4x4 grid
    mask[8:12, 0:8] = True  # the top half of cell (1, 0)
    cover = viz.token_coverage(mask, (4, 4))
    expected = torch.zeros(16)
    expected[1], expected[4] = 1.0, 0.5
    assert torch.equal(cover, expected)
    assert math.isclose(cover.mean().item(), mask.float().mean().item())
    with pytest.raises(ValueError, match="grid"):
        viz.token_coverage(mask, (5, 5))
    with pytest.raises(TypeError, match="mask"):
        viz.token_coverage(mask.float(), (4, 4))


@pytest.mark.parametrize("seed", range(4))
def test_object_share_chance_level_and_one_hot(seed):
    ds = ShapesDataset("test", 20, seed=seed)
    scene = ds.scene(seed)
    obj = scene.objects[0]
    cover = viz.token_coverage(viz.object_mask(obj, scene.image_size), (4, 4))
    uniform = viz.object_share(torch.full((16,), 0.3), cover)
    area = viz.object_mask(obj, scene.image_size).float().mean()
    assert math.isclose(uniform.item(), area.item(), rel_tol=1e-6)  # chance = area share
    k = int(cover.argmax())
    one_hot = torch.zeros(16)
    one_hot[k] = 2.0  # unnormalised on purpose
    assert math.isclose(viz.object_share(one_hot, cover).item(), cover[k].item())
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(5, 16, generator=g)
    assert_close(viz.object_share(a, cover), (a * cover).sum(-1) / a.sum(-1), "share", 1e-6)


def test_object_share_rejects_bad_inputs():
    cover = torch.rand(16)
    with pytest.raises(ValueError, match="same number of image tokens"):
        viz.object_share(torch.rand(15), cover)
    with pytest.raises(ValueError, match="attention must be non-negative"):
        viz.object_share(-torch.rand(16), cover)
    with pytest.raises(ValueError, match="coverage must lie in"):
        viz.object_share(torch.rand(16), cover + 1.5)
    with pytest.raises(TypeError, match="attention must be a float tensor"):
        viz.object_share([0.5] * 16, cover)
    with pytest.raises(ValueError, match="some weight on the image"):
        viz.object_share(torch.zeros(16), cover)
    with pytest.raises(TypeError, match="obj"):
        viz.object_mask(("red", "square"), 32)
    with pytest.raises(ValueError, match="image_size"):
        viz.object_mask(ShapeObject("red", "square", 5.5, 5.5, 2.5), 0)


# --------------------------------------------------------------------------------------
# Confusion matrices and answers
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_confusion_matrix_matches_sklearn(seed):
    rng = random.Random(seed)
    classes = ["red", "green", "blue", "yellow", "other"]
    n = rng.randint(1, 60)
    y_true = [rng.choice(classes[:4]) for _ in range(n)]
    y_pred = [rng.choice(classes) for _ in range(n)]
    labels = rng.sample(classes, rng.randint(2, 5)) + ["purple"]  # an unseen class too
    assert np.array_equal(viz.confusion_matrix(y_true, y_pred, labels),
                          sk_confusion_matrix(y_true, y_pred, labels=labels))
    assert np.array_equal(viz.confusion_matrix(y_true, y_pred),
                          sk_confusion_matrix(y_true, y_pred))


def test_confusion_matrix_rejects_bad_inputs():
    with pytest.raises(ValueError, match="y_pred must have one answer per y_true"):
        viz.confusion_matrix(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="labels must be a non-empty list without repeats"):
        viz.confusion_matrix(["a"], ["a"], ["a", "a"])


def test_answer_questions_equals_generate_one_by_one(tiny):
    tokenizer, model, samples, batch = tiny
    answers = viz.answer_questions(model, tokenizer, samples, batch_size=4)
    for b, sample in enumerate(samples):
        prompt = batch["input_ids"][b: b + 1, : int(batch["prompt_lengths"][b])]
        out = model.generate(sample["image"][None], prompt, 4, temperature=0,
                             eos_id=tokenizer.eos_id)[0, prompt.shape[1]:].tolist()
        if tokenizer.eos_id in out:
            out = out[: out.index(tokenizer.eos_id)]
        assert answers[b] == tokenizer.decode(out, skip_special=True)
    with pytest.raises(ValueError, match="samples"):
        viz.answer_questions(model, tokenizer, [])


def test_pictures_draw_and_refuse_bad_shapes(tiny):
    _, _, samples, _ = tiny
    fig, (a, b) = plt.subplots(1, 2)
    obj = samples[0]["scene"].objects[0]
    shown = viz.overlay_attention(a, samples[0]["image"], torch.rand(16), (4, 4), box=obj,
                                  title="t")
    assert shown.get_array().shape == (4, 4)
    viz.plot_confusion(b, np.eye(3, dtype=int), ["x", "y", "z"])
    assert len(b.texts) == 3
    with pytest.raises(ValueError, match="weights must hold"):
        viz.overlay_attention(a, samples[0]["image"], torch.rand(15), (4, 4))
    with pytest.raises(ValueError, match="matrix must be"):
        viz.plot_confusion(b, np.eye(3), ["x", "y"])
    plt.close(fig)
