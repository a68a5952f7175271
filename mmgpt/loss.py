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

from numbers import Integral, Real
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "logsumexp",
    "log_softmax",
    "cross_entropy",
    "perplexity",
    "contrastive_logits",
    "contrastive_loss",
]

REDUCTIONS = ("none", "mean", "sum")


def _check_float(x, name: str, fn: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {x.dtype}")


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
    _check_float(x, "x", "logsumexp")
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
    _check_float(x, "x", "log_softmax")
    dtype, x = x.dtype, _upcast(x)
    return (x - logsumexp(x, dim=dim, keepdim=True)).to(dtype)


# --------------------------------------------------------------------------------------
# Cross-entropy
# --------------------------------------------------------------------------------------

def _check_reduction(reduction, fn: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_cross_entropy_args(logits, target, ignore_index, reduction, label_smoothing,
                              weight, fn: str) -> bool:
    """Validate the arguments; return True when ``target`` holds class indices."""
    _check_float(logits, "logits", fn)
    if logits.dim() == 0:
        raise ValueError(f"{fn}: logits must have a class dimension (last), got a scalar")
    C = logits.shape[-1]
    if C == 0:
        raise ValueError(f"{fn}: logits must have at least one class (last dimension), "
                         f"got shape {tuple(logits.shape)}")
    if not isinstance(target, Tensor):
        raise TypeError(f"{fn}: target must be a tensor, got {type(target).__name__}")
    _check_reduction(reduction, fn)
    if (not isinstance(label_smoothing, Real) or isinstance(label_smoothing, bool)
            or not 0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"{fn}: label_smoothing must be a number in [0, 1], "
                         f"got {label_smoothing!r}")
    if not isinstance(ignore_index, Integral) or isinstance(ignore_index, bool):
        raise TypeError(f"{fn}: ignore_index must be an int, got {ignore_index!r}")
    if weight is not None:
        _check_float(weight, "weight", fn)
        if weight.shape != (C,):
            raise ValueError(f"{fn}: weight must have one entry per class, shape ({C},), "
                             f"got {tuple(weight.shape)}")
    if target.is_floating_point():  # class probabilities, one row per position
        if target.shape != logits.shape:
            raise ValueError(f"{fn}: a floating-point target holds class probabilities and "
                             f"must have logits' shape {tuple(logits.shape)}, got "
                             f"{tuple(target.shape)} (class indices must be integers)")
        return False
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"{fn}: target must hold integer class indices (int64), got "
                        f"{target.dtype}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"{fn}: target must have logits' shape without the class "
                         f"dimension, {tuple(logits.shape[:-1])}, got {tuple(target.shape)} "
                         f"(logits are (..., C) with the classes last)")
    bad = (target != ignore_index) & ((target < 0) | (target >= C))
    if bad.any():
        value = target[bad].flatten()[0].item()
        raise ValueError(f"{fn}: target holds {value}, outside [0, {C - 1}] for {C} classes "
                         f"and not ignore_index={ignore_index}")
    return True


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100,
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
    name them; the range check reads one boolean back from the device, as PyTorch's CPU
    kernel checks it too. float16/bfloat16 logits are computed in float32 and the result
    is cast back.
    """
    fn = "cross_entropy"
    indices = _check_cross_entropy_args(logits, target, ignore_index, reduction,
                                        label_smoothing, weight, fn)
    dtype, C = logits.dtype, logits.shape[-1]
    logp = log_softmax(_upcast(logits), dim=-1)  # (..., C)
    w = None if weight is None else weight.to(logp.dtype)
    eps = float(label_smoothing)

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


def perplexity(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
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

def _check_temperature(temperature, fn: str) -> None:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or not temperature.is_floating_point():
            raise ValueError(f"{fn}: temperature must be a positive number or a "
                             f"one-element float tensor, got shape "
                             f"{tuple(temperature.shape)} and dtype {temperature.dtype}")
        value = temperature.detach().item()
    elif isinstance(temperature, Real) and not isinstance(temperature, bool):
        value = float(temperature)
    else:
        raise TypeError(f"{fn}: temperature must be a positive number, got "
                        f"{type(temperature).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{fn}: temperature must be > 0 and finite, got {value}")


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
        _check_float(emb, name, fn)
        if emb.dim() != 2 or emb.shape[0] == 0:
            raise ValueError(f"{fn}: {name} must be 2-D (batch, dim) with a non-empty "
                             f"batch, got shape {tuple(emb.shape)}")
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"{fn}: image_emb and text_emb must hold the same number of pairs "
                         f"(batch), got {image_emb.shape[0]} images and "
                         f"{text_emb.shape[0]} texts")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"{fn}: image_emb and text_emb must have the same embedding size "
                         f"(dim), got {image_emb.shape[1]} and {text_emb.shape[1]}")
    _check_temperature(temperature, fn)
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
