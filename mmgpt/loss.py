"""Losses from scratch: cross-entropy for next-token prediction, contrastive alignment.

Chapter 09 derives these. Everything is built from one numerically safe primitive:

* :func:`logsumexp` equals ``torch.logsumexp``: ``log(sum(exp(x)))`` computed as
  ``m + log(sum(exp(x - m)))`` with ``m`` the maximum, so nothing overflows even for logits
  of 1e4 (where ``exp`` alone gives ``inf``);
* :func:`log_softmax` equals ``F.log_softmax``: ``x - logsumexp(x)``, never ``log(softmax(x))``
  (which gives ``-inf`` once a probability underflows to 0);
* :func:`cross_entropy` equals ``F.cross_entropy`` on the flattened tensors, with the class
  dimension **last** (a language model's layout): logits ``(..., C)`` and target ``(...)``
  class indices, or target ``(..., C)`` probabilities. ``ignore_index``, ``reduction``,
  ``label_smoothing`` and a per-class ``weight`` behave as PyTorch's, gradients included;
* :func:`perplexity`: ``exp`` of the mean cross-entropy;
* :func:`contrastive_logits` and :func:`contrastive_loss`: CLIP's symmetric InfoNCE loss,
  which pulls matching image and text embeddings together and pushes the other pairs of
  the batch apart.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Union

import torch
from torch import Tensor

from . import _checks

__all__ = [
    "IGNORE_INDEX",
    "logsumexp",
    "log_softmax",
    "cross_entropy",
    "perplexity",
    "contrastive_logits",
    "contrastive_loss",
]

REDUCTIONS = ("none", "mean", "sum")

# The target that counts for nothing: the book's labels carry it on image, prompt and padding
# positions (the package's one definition; F.cross_entropy's default too).
IGNORE_INDEX = -100


def _upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 are computed in float32 (their exp and sums lose too much)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# --------------------------------------------------------------------------------------
# log-sum-exp and log-softmax
# --------------------------------------------------------------------------------------

def logsumexp(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """``log(sum(exp(x), dim))``, computed without overflow; equals ``torch.logsumexp``.

    For any constant ``m``: ``log sum_j exp(x_j) = m + log sum_j exp(x_j - m)``. With ``m``
    the largest entry, every ``exp(x_j - m)`` lies in ``(0, 1]`` and one of them is exactly
    1, so the sum neither overflows (huge logits) nor underflows to 0 (very negative ones).
    The shift needs no gradient (the identity holds for every ``m``), so it is detached;
    the gradient of the result is ``softmax(x)``. A row that is entirely ``-inf`` gives
    ``-inf``, and a row holding ``+inf`` gives ``+inf``, as in PyTorch.
    """
    _checks.tensor(x, "x", "logsumexp", floating=True)
    dtype, x = x.dtype, _upcast(x)
    if x.dim() == 0:
        return x.clone().to(dtype)
    m = x.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # +-inf rows: no shift
    out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))
    return (out if keepdim else out.squeeze(dim)).to(dtype)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """``log(softmax(x))`` as ``x - logsumexp(x)``; equals ``F.log_softmax``.

    Taking the log of a computed softmax fails where a probability underflows to 0
    (``log 0 = -inf``, e.g. a logit 200 below the largest in float32); the difference
    form stays exact.
    """
    _checks.tensor(x, "x", "log_softmax", floating=True)
    dtype, x = x.dtype, _upcast(x)
    return (x - logsumexp(x, dim=dim, keepdim=True)).to(dtype)


# --------------------------------------------------------------------------------------
# Cross-entropy
# --------------------------------------------------------------------------------------

def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX,
                  reduction: str = "mean", label_smoothing: float = 0.0, *,
                  weight: Optional[Tensor] = None) -> Tensor:
    """Cross-entropy between ``softmax(logits)`` and the target; equals ``F.cross_entropy``.

    Args:
        logits: ``(..., C)`` unnormalised scores, the **classes last** (a language model's
            ``(B, T, vocab_size)``). ``F.cross_entropy`` wants them second, ``(N, C, ...)``;
            on flattened tensors the two agree:
            ``cross_entropy(z, t) == F.cross_entropy(z.reshape(-1, C), t.reshape(-1))``.
        target: ``(...)`` integer class indices in ``[0, C)`` or equal to ``ignore_index``;
            or ``(..., C)`` floating-point class probabilities (soft targets).
        ignore_index: positions whose target equals it count for nothing: loss 0, gradient
            0, and they are left out of the mean's denominator. The book marks image and
            prompt positions with it, so only answer (or caption) tokens are learned.
        reduction: ``"none"`` (one loss per position, shape ``target``'s for indices),
            ``"sum"``, or ``"mean"``: the sum divided by the number of counted positions
            (by the sum of their class weights when ``weight`` is given; by the number of
            positions for soft targets). If *every* position is ignored, the mean is
            ``0 / 0 = nan``, exactly as in PyTorch; ``"sum"`` gives 0.
        label_smoothing: ``eps`` in ``[0, 1]``: the target distribution becomes
            ``(1 - eps) * one_hot + eps / C``, so the model is never pushed to certainty.
        weight: optional ``(C,)`` per-class weights, as in PyTorch (keyword-only here).

    Per position ``i`` with target class ``y_i`` and ``log p_i = log_softmax(logits_i)``:
    ``loss_i = -(1 - eps) * w[y_i] * log p_i[y_i] - eps / C * sum_c w[c] * log p_i[c]``
    (``w = 1`` without weights). Invalid arguments (a target of the wrong shape or out of
    range, an unknown reduction, ``label_smoothing`` outside ``[0, 1]``) raise errors that
    name them. The range of the target's values is checked where that reads nothing back
    from an accelerator: on CPU tensors (the data pipeline builds its labels there); on a
    GPU an out-of-range index trips the device's own index check, as in PyTorch.
    float16/bfloat16 logits are computed in float32 and the result is cast back.
    """
    fn = "cross_entropy"
    _checks.tensor(logits, "logits", fn, floating=True)
    _checks.tensor(target, "target", fn)
    _checks.one_of(reduction, "reduction", fn, REDUCTIONS)
    eps = _checks.number(label_smoothing, "label_smoothing", fn, 0, 1)
    _checks.integer(ignore_index, "ignore_index", fn, error=TypeError)
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{fn}: logits must have a class dimension (last) with at least one "
                         f"class, got shape {tuple(logits.shape)}")
    dtype, C = logits.dtype, logits.shape[-1]
    if weight is not None and _checks.tensor(weight, "weight", fn, floating=True).shape != (C,):
        raise ValueError(f"{fn}: weight must have one entry per class, shape ({C},), "
                         f"got {tuple(weight.shape)}")
    indices = not target.is_floating_point()  # else class probabilities, one row per position
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"{fn}: target must hold integer class indices (int64), got {target.dtype}")
    if target.shape != (logits.shape[:-1] if indices else logits.shape):
        raise ValueError(f"{fn}: target must have logits' shape without the class dimension, "
                         f"{tuple(logits.shape[:-1])}, for class indices, or logits' shape "
                         f"{tuple(logits.shape)} (a floating-point target holds class "
                         f"probabilities); got {_checks.describe(target)}")
    if indices and _checks.on_host(target):
        bad = (target != ignore_index) & ((target < 0) | (target >= C))
        if bad.any():
            raise ValueError(f"{fn}: target holds {target[bad][0].item()}, outside [0, {C - 1}] "
                             f"for {C} classes and not ignore_index={ignore_index}")

    logp = log_softmax(_upcast(logits), dim=-1)  # (..., C)
    w = None if weight is None else weight.to(logp.dtype)

    if not indices:  # soft targets: the seed's -sum_c y_c log p_c, row by row
        q = target.to(logp.dtype)
        if eps:
            q = q * (1 - eps) + eps / C
        losses = -((q if w is None else q * w) * logp).sum(-1)
        count = losses.new_tensor(float(losses.numel()))
    else:
        counted = target != ignore_index
        safe = torch.where(counted, target, torch.zeros_like(target)).long()  # any valid class
        nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # -log p[y]
        target_w = torch.ones_like(nll) if w is None else w[safe]
        target_w = torch.where(counted, target_w, torch.zeros_like(target_w))
        losses = torch.where(counted, target_w * nll, torch.zeros_like(nll))  # 0 if ignored
        if eps:
            spread = -(logp if w is None else logp * w).sum(-1)  # -sum_c w_c log p[c]
            spread = torch.where(counted, spread, torch.zeros_like(spread))
            losses = (1 - eps) * losses + eps / C * spread
        count = target_w.sum()  # the number of counted positions (or their weight)

    if reduction == "none":
        return losses.to(dtype)
    total = losses.sum()
    return (total if reduction == "sum" else total / count).to(dtype)


def perplexity(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``exp(cross_entropy(logits, target, ignore_index))``: the model's "effective number
    of choices" per counted token.

    A model that spreads its probability evenly over ``k`` tokens has perplexity ``k``; an
    untrained model over a vocabulary of ``V`` has about ``V``. Over a whole evaluation
    set, take ``exp`` of the token-weighted mean loss (not the mean of per-batch
    perplexities, which overweights bad batches).
    """
    return torch.exp(cross_entropy(logits, target, ignore_index=ignore_index))


# --------------------------------------------------------------------------------------
# Contrastive alignment (CLIP)
# --------------------------------------------------------------------------------------

def _normalize(x: Tensor) -> Tensor:
    """Each row divided by its length (a zero row stays zero, as in ``F.normalize``)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def contrastive_logits(image_emb: Tensor, text_emb: Tensor,
                       temperature: Union[float, Tensor] = 0.07) -> Tensor:
    """The ``(B, B)`` matrix of cosine similarities divided by ``temperature``.

    Entry ``[i, j]`` compares image ``i`` with text ``j``; the matching pairs are on the
    diagonal. Both embeddings are **L2-normalised here**, so any encoder output can be
    passed (normalising an already unit-length vector changes nothing) and every
    similarity lies in ``[-1, 1]`` before the division.
    """
    fn = "contrastive_logits"
    for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
        _checks.tensor(emb, name, fn, ndim=(2,), layout="2-D (batch, dim)", floating=True)
    if text_emb.shape != image_emb.shape or len(image_emb) == 0:
        raise ValueError(f"{fn}: image_emb and text_emb must hold the same number of pairs (a "
                         f"non-empty batch) with the same embedding size (dim); got "
                         f"{len(image_emb)} images and {len(text_emb)} texts, of sizes "
                         f"{image_emb.shape[1]} and {text_emb.shape[1]}")
    t = temperature.detach() if isinstance(temperature, Tensor) else temperature
    if not (isinstance(t, Real) and not isinstance(t, bool)
            or isinstance(t, Tensor) and t.numel() == 1 and t.is_floating_point()):
        raise TypeError(f"{fn}: temperature must be a positive number or a one-element float "
                        f"tensor, got {_checks.describe(t)}")
    if (not isinstance(t, Tensor) or _checks.on_host(t)) and not 0 < float(t) < math.inf:
        raise ValueError(f"{fn}: temperature must be > 0 and finite, got {float(t)}")
    return _normalize(image_emb) @ _normalize(text_emb).T / temperature


def contrastive_loss(image_emb: Tensor, text_emb: Tensor,
                     temperature: Union[float, Tensor] = 0.07) -> Tensor:
    """CLIP's symmetric contrastive (InfoNCE) loss for a batch of ``B`` matching pairs.

    ``image_emb`` and ``text_emb`` are ``(B, dim)``; row ``i`` of each describes the same
    example. With ``S = contrastive_logits(...)`` (cosine similarities / temperature):

    * image -> text: each image must pick its own text among the ``B`` texts,
      ``cross_entropy(S, arange(B))`` (softmax along each row);
    * text -> image: each text must pick its own image, ``cross_entropy(S.T, arange(B))``;

    and the loss is their average. The embeddings are L2-normalised inside (see
    :func:`contrastive_logits`). ``temperature`` (> 0; CLIP learns it, starting at 0.07)
    sets how sharp the softmax is; a one-element tensor may carry a gradient. At random
    initialisation the loss is about ``ln B``.
    """
    logits = contrastive_logits(image_emb, text_emb, temperature)
    labels = torch.arange(logits.shape[0], device=logits.device)
    image_to_text = cross_entropy(logits, labels)
    text_to_image = cross_entropy(logits.T, labels)
    return (image_to_text + text_to_image) / 2
