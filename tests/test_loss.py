"""Tests for ``mmgpt.loss``: everything is checked against PyTorch or a direct formula.

* ``logsumexp`` / ``log_softmax`` against ``torch.logsumexp`` / ``F.log_softmax``: random
  shapes and dims, huge logits (1e4, where the naive formula overflows), -inf and +inf rows,
  gradients;
* ``cross_entropy`` against ``F.cross_entropy`` on the flattened tensors, classes last, over
  seeded random configurations: any number of leading dimensions (none, empty ones too),
  ``ignore_index`` (default, custom, inside the class range, all positions ignored),
  ``label_smoothing``, ``weight``, the three reductions, float32/float64, soft
  (probability) targets; values and gradients; huge logits; bfloat16;
* ``perplexity`` is ``exp`` of the mean loss;
* ``contrastive_loss`` against an explicit double loop over the batch, symmetric in its two
  arguments, invariant to the embeddings' lengths, with a gradient for the temperature;
* bad arguments raise ``ValueError``/``TypeError`` naming the problem.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, leaf

from mmgpt.loss import (contrastive_logits, contrastive_loss, cross_entropy, log_softmax,
                        logsumexp, perplexity)

ATOL = {torch.float64: 1e-10, torch.float32: 2e-5}  # round-off; a wrong term is O(0.01)
ERRORS = (ValueError, TypeError)


# ---------------------------------------------------------------------------------------------
# log-sum-exp and log-softmax
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_logsumexp_and_log_softmax_match_torch(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(torch.randint(1, 6, (int(torch.randint(1, 4, (1,), generator=gen)),),
                                generator=gen).tolist())
    dim = int(torch.randint(-len(shape), len(shape), (1,), generator=gen))
    scale = [1.0, 30.0, 1e4][seed % 3]
    x = torch.randn(shape, generator=gen, dtype=dtype) * scale
    for keepdim in (False, True):
        ours, ref = leaf(x), leaf(x)
        out, expected = logsumexp(ours, dim, keepdim), torch.logsumexp(ref, dim, keepdim)
        assert_close(out, expected, f"logsumexp dim={dim} keepdim={keepdim}",
                     ATOL[dtype] * scale)
        grad = torch.randn(expected.shape, generator=gen, dtype=dtype)
        out.backward(grad)
        expected.backward(grad)
        assert_close(ours.grad, ref.grad, "logsumexp gradient", ATOL[dtype])
    ours, ref = leaf(x), leaf(x)
    out, expected = log_softmax(ours, dim), F.log_softmax(ref, dim)
    assert torch.isfinite(out).all()
    assert_close(out, expected, f"log_softmax dim={dim}", ATOL[dtype] * scale)
    grad = torch.randn(x.shape, generator=gen, dtype=dtype)
    out.backward(grad)
    expected.backward(grad)
    assert_close(ours.grad, ref.grad, "log_softmax gradient", ATOL[dtype] * 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_huge_logits_overflow_the_naive_formula_but_not_ours(dtype):
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4], [-1e4, -1e4 - 3.0, -1e4 - 900.0]], dtype=dtype)
    naive = torch.log(torch.exp(x).sum(-1))
    assert torch.isinf(naive).all()  # exp(1e4) = inf, exp(-1e4) = 0 -> log 0 = -inf
    assert_close(logsumexp(x), torch.logsumexp(x, -1), "logsumexp", 0.0)
    assert torch.isfinite(log_softmax(x)).all()
    assert_close(log_softmax(x), F.log_softmax(x, -1), "log_softmax", 1e-3)


def test_infinite_rows_behave_as_in_torch():
    x = torch.tensor([[-math.inf, -math.inf], [math.inf, 0.0], [-math.inf, 2.0]])
    assert_close(logsumexp(x), torch.logsumexp(x, -1), "logsumexp with infinities", 0.0)
    assert_close(log_softmax(x[2:]), F.log_softmax(x[2:], -1), "log_softmax with -inf", 0.0)


# ---------------------------------------------------------------------------------------------
# Cross-entropy against F.cross_entropy
# ---------------------------------------------------------------------------------------------

def _draw_config(seed: int) -> dict:
    rng = random.Random(seed)
    leading = tuple(rng.randint(1, 5) for _ in range(rng.choice([0, 1, 2, 3])))
    C = rng.choice([1, 2, 5, 11, 40])
    return dict(
        leading=leading, C=C,
        dtype=rng.choice([torch.float32, torch.float64]),
        ignore_index=rng.choice([-100, -100, -1, 0, C + 3]),
        ignored=rng.choice([0.0, 0.3, 0.7]),
        reduction=rng.choice(["none", "sum", "mean"]),
        label_smoothing=rng.choice([0.0, 0.0, 0.1, rng.random(), 1.0]),
        weighted=rng.random() < 0.3,
        scale=rng.choice([1.0, 1.0, 10.0]),
    )


def _reference(logits, target, **kwargs):
    """F.cross_entropy on the flattened tensors (classes second there), reshaped back."""
    C = logits.shape[-1]
    soft = target.is_floating_point()
    out = F.cross_entropy(logits.reshape(-1, C), target.reshape(-1, C) if soft else target.reshape(-1),
                          **kwargs)
    if kwargs.get("reduction") == "none":
        out = out.reshape(logits.shape[:-1])
    return out


CONFIGS = [_draw_config(seed) for seed in range(60)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{'x'.join(map(str, c['leading'])) or 'scalar'}"
                         f"-C{c['C']}-{c['reduction']}")
def test_cross_entropy_matches_pytorch(cfg):
    gen = torch.Generator().manual_seed(len(CONFIGS) + CONFIGS.index(cfg))
    C, dtype, leading = cfg["C"], cfg["dtype"], cfg["leading"]
    logits = torch.randn(*leading, C, generator=gen, dtype=dtype) * cfg["scale"]
    target = torch.randint(0, C, leading, generator=gen)
    drop = torch.rand(leading, generator=gen) < cfg["ignored"]
    target = torch.where(drop, torch.full_like(target, cfg["ignore_index"]), target)
    weight = torch.rand(C, generator=gen, dtype=dtype) + 0.1 if cfg["weighted"] else None
    kwargs = dict(ignore_index=cfg["ignore_index"], reduction=cfg["reduction"],
                  label_smoothing=cfg["label_smoothing"], weight=weight)
    ours_in, ref_in = leaf(logits), leaf(logits)
    out, expected = cross_entropy(ours_in, target, **kwargs), _reference(ref_in, target, **kwargs)
    atol = ATOL[dtype] * cfg["scale"] * (max(1, target.numel()) if cfg["reduction"] == "sum" else 1)
    assert_close(out, expected, f"cross_entropy {cfg}", atol, equal_nan=True)
    if not torch.isnan(expected).any():
        grad = torch.rand(expected.shape, generator=gen, dtype=dtype)
        out.backward(grad)
        expected.backward(grad)
        assert_close(ours_in.grad, ref_in.grad, f"gradient {cfg}", ATOL[dtype])


@pytest.mark.parametrize("seed", range(6))
def test_soft_targets_match_pytorch(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, seed + 1, 6, generator=gen, dtype=torch.float64)
    probs = torch.softmax(torch.randn(logits.shape, generator=gen, dtype=torch.float64) * 3, -1)
    weight = torch.rand(6, generator=gen, dtype=torch.float64) if seed % 2 else None
    for reduction in ("none", "sum", "mean"):
        for eps in (0.0, 0.25):
            ours_in, ref_in = leaf(logits), leaf(logits)
            kwargs = dict(reduction=reduction, label_smoothing=eps, weight=weight)
            out, expected = cross_entropy(ours_in, probs, **kwargs), _reference(ref_in, probs, **kwargs)
            assert_close(out, expected, f"soft targets {kwargs}", 1e-10)
            out.sum().backward()
            expected.sum().backward()
            assert_close(ours_in.grad, ref_in.grad, "soft-target gradient", 1e-10)


def test_one_hot_soft_targets_equal_class_indices():
    """The seed's formula -sum_c y_c log p_c with a one-hot y is -log p of the right class."""
    logits = torch.randn(4, 7, 9, dtype=torch.float64)
    target = torch.randint(0, 9, (4, 7))
    one_hot = F.one_hot(target, 9).double()
    for eps in (0.0, 0.1):
        assert_close(cross_entropy(logits, one_hot, label_smoothing=eps),
                     cross_entropy(logits, target, label_smoothing=eps), "one-hot vs indices", 1e-12)


@pytest.mark.parametrize("ignore_index", [-100, -1, 2])
def test_all_ignored_batch_gives_nan_mean_like_pytorch(ignore_index):
    logits = torch.randn(2, 3, 5, requires_grad=True)
    target = torch.full((2, 3), ignore_index)
    for eps in (0.0, 0.2):
        mean = cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=eps)
        ref = _reference(logits, target, ignore_index=ignore_index, label_smoothing=eps)
        assert torch.isnan(mean) and torch.isnan(ref)  # 0 / 0: no position counts
        (grad,) = torch.autograd.grad(mean, logits)
        assert torch.equal(grad, torch.zeros_like(grad))  # and no gradient flows
        for reduction in ("sum", "none"):
            out = cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction,
                                label_smoothing=eps)
            assert torch.equal(out, torch.zeros_like(out))


def test_ignored_positions_do_not_change_the_loss():
    """Whatever the logits at ignored positions, the loss and the other gradients stay."""
    logits = torch.randn(2, 6, 10, dtype=torch.float64)
    target = torch.randint(0, 10, (2, 6))
    target[:, :3] = -100  # e.g. image and prompt positions
    changed = logits.clone()
    changed[:, :3] = torch.randn(2, 3, 10, dtype=torch.float64) * 100
    assert_close(cross_entropy(changed, target), cross_entropy(logits, target), "loss", 1e-12)
    assert_close(cross_entropy(logits, target), F.cross_entropy(logits[:, 3:].reshape(-1, 10),
                                                                target[:, 3:].reshape(-1)),
                 "mean over the counted positions only", 1e-12)


def test_empty_batch_and_unbatched_input():
    empty = cross_entropy(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
    assert torch.isnan(empty) and torch.isnan(F.cross_entropy(torch.randn(0, 4), torch.zeros(0, dtype=torch.long)))
    logits, target = torch.randn(6, dtype=torch.float64), torch.tensor(4)
    assert_close(cross_entropy(logits, target), F.cross_entropy(logits, target), "unbatched", 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_huge_logits_are_finite_and_equal_pytorch(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 50, generator=gen, dtype=dtype) * 1e4
    target = torch.randint(0, 50, (4, 5), generator=gen)
    ours_in, ref_in = leaf(logits), leaf(logits)
    for reduction in ("none", "mean"):
        out = cross_entropy(ours_in, target, reduction=reduction, label_smoothing=0.1)
        expected = _reference(ref_in, target, reduction=reduction, label_smoothing=0.1)
        assert torch.isfinite(out).all()
        # float32 spacing near 1e4..1e5 is ~0.01; the two sum in different orders
        assert_close(out, expected, f"huge logits {reduction}", 1e-9 if dtype == torch.float64 else 0.05)
    cross_entropy(ours_in, target).backward()
    _reference(ref_in, target).backward()
    assert torch.isfinite(ours_in.grad).all()
    assert_close(ours_in.grad, ref_in.grad, "huge-logit gradient", ATOL[dtype])


def test_half_precision_is_computed_in_float32():
    logits = torch.randn(8, 16, 30).to(torch.bfloat16)
    target = torch.randint(0, 30, (8, 16))
    out = cross_entropy(logits, target)
    assert out.dtype == torch.bfloat16
    expected = F.cross_entropy(logits.float().reshape(-1, 30), target.reshape(-1))
    assert abs(out.float().item() - expected.item()) < 0.02


def test_loss_at_uniform_logits_is_log_of_the_vocabulary_size():
    for V in (2, 100, 50257):
        assert math.isclose(cross_entropy(torch.zeros(3, V), torch.tensor([0, 1, V - 1])).item(),
                            math.log(V), rel_tol=1e-6)


def test_gradient_is_softmax_minus_one_hot():
    logits = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 8, (5,))
    cross_entropy(logits, target, reduction="sum").backward()
    assert_close(logits.grad, torch.softmax(logits.detach(), -1) - F.one_hot(target, 8).double(),
                 "softmax - one_hot", 1e-12)


def test_perplexity_is_exp_of_the_mean_loss():
    logits = torch.randn(3, 4, 12, dtype=torch.float64)
    target = torch.randint(0, 12, (3, 4))
    target[0] = -1
    assert_close(perplexity(logits, target, ignore_index=-1),
                 cross_entropy(logits, target, ignore_index=-1).exp(), "perplexity", 1e-12)
    uniform = perplexity(torch.zeros(2, 37, dtype=torch.float64), torch.tensor([3, 5]))
    assert math.isclose(uniform.item(), 37, rel_tol=1e-9)  # as unsure as a uniform guess over 37


# ---------------------------------------------------------------------------------------------
# Contrastive loss
# ---------------------------------------------------------------------------------------------

def _contrastive_loops(image_emb, text_emb, temperature):
    """The InfoNCE formula written out, one image and one text at a time."""
    B = image_emb.shape[0]
    img = [v / v.norm() for v in image_emb]
    txt = [v / v.norm() for v in text_emb]
    s = [[(img[i] * txt[j]).sum() / temperature for j in range(B)] for i in range(B)]
    image_to_text = sum(-(s[i][i] - torch.log(sum(torch.exp(s[i][j]) for j in range(B))))
                        for i in range(B)) / B
    text_to_image = sum(-(s[j][j] - torch.log(sum(torch.exp(s[i][j]) for i in range(B))))
                        for j in range(B)) / B
    return (image_to_text + text_to_image) / 2


@pytest.mark.parametrize("seed", range(6))
def test_contrastive_loss_matches_the_formula_and_is_symmetric(seed):
    gen = torch.Generator().manual_seed(seed)
    B, D = [(1, 3), (2, 4), (5, 8), (8, 2), (16, 32), (3, 64)][seed]
    temperature = [0.07, 1.0, 0.5, 0.01, 0.2, 2.0][seed]
    image, text = (torch.randn(B, D, generator=gen, dtype=torch.float64) for _ in range(2))
    ours_in, loops_in = [leaf(image), leaf(text)], [leaf(image), leaf(text)]
    loss = contrastive_loss(*ours_in, temperature)
    expected = _contrastive_loops(*loops_in, temperature)
    assert_close(loss, expected, "contrastive loss vs loops", 1e-10)
    loss.backward()
    expected.backward()
    for a, b, name in zip(ours_in, loops_in, ("image_emb", "text_emb")):
        assert_close(a.grad, b.grad, f"gradient for {name}", 1e-10)
    assert_close(contrastive_loss(text, image, temperature), loss.detach(), "swapped arguments", 1e-12)
    # the same thing written with PyTorch's cross-entropy on normalised embeddings
    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / temperature
    labels = torch.arange(B)
    reference = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert_close(loss.detach(), reference, "vs F.cross_entropy", 1e-10)
    assert_close(contrastive_logits(image, text, temperature), logits, "logits", 1e-10)


def test_contrastive_loss_normalises_inside_and_learns_the_temperature():
    image, text = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    lengths = torch.rand(6, 1, dtype=torch.float64) * 10 + 0.1
    assert_close(contrastive_loss(image * lengths, text, 0.1), contrastive_loss(image, text, 0.1),
                 "rescaled embeddings", 1e-12)
    temperature = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    contrastive_loss(image, text, temperature).backward()
    assert temperature.grad is not None and torch.isfinite(temperature.grad)
    # a perfect match (text = image) at a low temperature: the loss goes to 0
    assert contrastive_loss(image, image.clone(), 0.001).item() < 1e-6


def test_contrastive_loss_of_unrelated_embeddings_is_about_log_batch():
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(64, 256, generator=gen), torch.randn(64, 256, generator=gen)
    # at temperature 1 the similarities (~ +-0.06) barely move the softmax from uniform
    assert abs(contrastive_loss(image, text, 1.0).item() - math.log(64)) < 0.01


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: cross_entropy(torch.randn(2, 3, 5), torch.zeros(2, 5, dtype=torch.long)),
     r"target must have logits' shape"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.zeros(2, 5, 1, dtype=torch.long)),
     r"target must have logits' shape"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.tensor([0, 5])), r"target holds 5, outside \[0, 4\]"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.tensor([-3, 1])), r"target holds -3.*ignore_index=-100"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.tensor([-100, 1]), ignore_index=-1), r"target holds -100"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.tensor([0, 1]), reduction="avg"), r"reduction must be one of"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.tensor([0, 1]), label_smoothing=1.5),
     r"label_smoothing must be .* \[0, 1\]"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.tensor([0, 1]), label_smoothing=-0.1), r"label_smoothing"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.tensor([0.0, 1.0])),
     r"floating-point target holds class probabilities"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.tensor([True, False])), r"target must hold integer class indices"),
    (lambda: cross_entropy(torch.tensor([[1, 2]]), torch.tensor([0])), r"logits must be a floating-point tensor"),
    (lambda: cross_entropy([[1.0, 2.0]], torch.tensor([0])), r"logits must be a tensor"),
    (lambda: cross_entropy(torch.tensor(1.0), torch.tensor(0)), r"logits must have a class dimension"),
    (lambda: cross_entropy(torch.randn(2, 0), torch.tensor([0, 0])), r"at least one class"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.tensor([0, 1]), weight=torch.ones(4)),
     r"weight must have one entry per class"),
    (lambda: cross_entropy(torch.randn(2, 5), torch.tensor([0, 1]), ignore_index=1.5), r"ignore_index must be an int"),
    (lambda: contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), 0.0), r"temperature must be > 0"),
    (lambda: contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), -0.07), r"temperature must be > 0"),
    (lambda: contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), torch.tensor([0.1, 0.2])), r"temperature must be"),
    (lambda: contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), "0.1"), r"temperature must be a positive number"),
    (lambda: contrastive_loss(torch.randn(4, 8), torch.randn(5, 8)), r"same number of pairs .* 4 images and 5 texts"),
    (lambda: contrastive_loss(torch.randn(4, 8), torch.randn(4, 6)), r"same embedding size .* 8 and 6"),
    (lambda: contrastive_loss(torch.randn(4, 2, 8), torch.randn(4, 2, 8)), r"image_emb must be 2-D"),
    (lambda: contrastive_loss(torch.randn(0, 8), torch.randn(0, 8)), r"non-empty batch"),
    (lambda: contrastive_loss(torch.randn(4, 8), torch.randint(0, 3, (4, 8))), r"text_emb must be a floating-point"),
    (lambda: logsumexp([1.0, 2.0]), r"x must be a tensor"),
    (lambda: log_softmax(torch.tensor([1, 2])), r"x must be a floating-point"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_inputs_raise_errors_naming_the_problem(call, match):
    with pytest.raises(ERRORS, match=match):
        call()


def test_loss_checks_read_no_tensor_values_off_the_cpu():
    """On an accelerator the target's range and the temperature's value are not read back (a
    device sync every step). The meta device has no values, so a read there would raise."""
    with torch.device("meta"):
        logits, target = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
        weight = torch.rand(5)
        for kwargs in (dict(), dict(reduction="sum", label_smoothing=0.1), dict(weight=weight)):
            assert cross_entropy(logits, target, **kwargs).shape == ()
        assert cross_entropy(logits, target, reduction="none").shape == (2, 3)
        temperature = torch.tensor(0.1, requires_grad=True)
        assert contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), temperature).shape == ()


def test_ignore_index_has_one_definition():
    from mmgpt.data import IGNORE_INDEX as data_ignore
    from mmgpt.loss import IGNORE_INDEX

    assert IGNORE_INDEX == -100 and data_ignore is IGNORE_INDEX
    assert cross_entropy.__defaults__[0] is IGNORE_INDEX


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), torch.tensor(float("nan"))])
def test_temperature_must_be_finite(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0 and finite"):
        contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), temperature)
