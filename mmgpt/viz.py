"""Looking inside a trained model: attention over the image, rollout, object masks, confusion.

Chapter 12 builds these pieces and measures with them:

* :func:`capture_attention` and :func:`attention_maps`: every decoder layer's attention
  weights, per head, from one forward pass of a prefix-fusion :class:`MultimodalGPT`
  (forward hooks; the model's own code is untouched);
* :func:`attention_rollout`: Abnar & Zuidema's (2020) attention rollout, which follows
  attention through the layers: ``rollout = Â_L ... Â_2 Â_1`` with
  ``Â = (A + I) / 2`` (the residual connection), rows summing to one;
* :func:`object_mask` and :func:`token_coverage`: which pixels an object covers, and
  what fraction of each image token's cell that is;
* :func:`object_share`: the share of the attention on the image that falls on an
  object, to compare with the object's share of the image (the chance level);
* :func:`answer_questions` (greedy answers) and :func:`confusion_matrix` (rows: the
  true answer, columns: the model's, as ``sklearn.metrics.confusion_matrix``);
* :func:`overlay_attention` and :func:`plot_confusion`: the pictures.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import describe, is_int, positive_int
from .attention import MultiHeadAttention
from .data.shapes import BACKGROUND, Scene, ShapeObject, render_scene
from .fusion import PrefixFusion, splice_image_tokens

__all__ = [
    "capture_attention",
    "AttentionMaps",
    "attention_maps",
    "attention_rollout",
    "object_mask",
    "token_coverage",
    "object_share",
    "answer_questions",
    "confusion_matrix",
    "overlay_attention",
    "plot_confusion",
]


# --------------------------------------------------------------------------------------
# Collecting attention weights
# --------------------------------------------------------------------------------------

@contextlib.contextmanager
def capture_attention(modules) -> Iterator[List[Tensor]]:
    """Record the attention weights of ``modules`` while the ``with`` block runs.

    ``modules`` is a model (every :class:`~mmgpt.attention.MultiHeadAttention` inside it,
    in order) or a sequence of ``MultiHeadAttention``. Yields a list that fills with one
    ``(B, heads, L, S)`` tensor per call, in call order (for a decoder: layer 0 first).

    A forward hook re-runs each module's ``forward`` with ``need_weights=True`` on the
    same inputs (without hooks, so no recursion), under ``no_grad``: the model's outputs
    are unchanged and nothing in its code is edited. The hooks are removed on exit.
    Calls with a KV cache (generation) are refused: re-running them would fill the cache
    twice.
    """
    fn = "capture_attention"
    if isinstance(modules, nn.Module):
        modules = [m for m in modules.modules() if isinstance(m, MultiHeadAttention)]
    else:
        modules = list(modules)
    if not modules or not all(isinstance(m, MultiHeadAttention) for m in modules):
        raise TypeError(f"{fn}: modules must be a model holding MultiHeadAttention layers "
                        f"or a sequence of them, got {[type(m).__name__ for m in modules]}")
    captured: List[Tensor] = []

    def hook(module, args, kwargs, output):
        if kwargs.get("cache") is not None:
            raise RuntimeError(f"{fn}: cannot record attention in a call with a KV cache "
                               f"(generation); run a plain forward pass instead")
        with torch.no_grad():
            _, weights = module.forward(*args, **dict(kwargs, need_weights=True,
                                                      average_attn_weights=False))
        captured.append(weights.detach())

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@dataclass
class AttentionMaps:
    """The self-attention of a prefix-fusion model on one batch.

    ``weights``: ``(layers, B, heads, L, L)``, row ``i`` = where position ``i`` looks;
    ``is_image``: ``(B, L)``, ``True`` at the ``N`` image tokens; ``text_index``:
    ``(B, T)``, the position of each ``input_ids`` token in the spliced sequence (see
    :func:`~mmgpt.fusion.splice_image_tokens`).
    """

    weights: Tensor
    is_image: Tensor
    text_index: Tensor

    @property
    def num_image_tokens(self) -> int:
        return int(self.is_image[0].sum())

    def rollout(self) -> Tensor:
        """Attention rollout over the layers, heads averaged: ``(B, L, L)``."""
        return attention_rollout(self.weights.mean(dim=2))

    def image_rows(self, matrix: Tensor, text_positions) -> Tensor:
        """Rows of any ``(..., B, L, L)`` matrix over this batch's sequence (the weights, a
        rollout) at the ``input_ids`` positions ``text_positions`` (one per sample), image
        keys only: ``(..., B, N)``."""
        B, L = self.is_image.shape
        positions = torch.as_tensor(text_positions).long().reshape(-1)
        if positions.numel() != B or bool((positions < 0).any()) \
                or bool((positions >= self.text_index.shape[1]).any()):
            raise ValueError(f"AttentionMaps: text_positions must hold one position in "
                             f"0..{self.text_index.shape[1] - 1} per sample ({B}), got "
                             f"{describe(text_positions)}")
        query = self.text_index.gather(1, positions[:, None])[:, 0]  # (B,)
        rows = matrix[..., torch.arange(B), query, :]  # (..., B, L)
        keys = self.is_image.nonzero()[:, 1].reshape(B, -1)  # (B, N): image positions
        return rows.gather(-1, keys.expand(*rows.shape[:-2], B, -1))

    def image_attention(self, text_positions) -> Tensor:
        """``(layers, B, heads, N)``: how much the token at ``text_positions[b]`` of
        ``input_ids`` (e.g. the ``<sep>`` that predicts the answer) attends to each image
        token, in every layer and head."""
        per_head = self.weights.permute(0, 2, 1, 3, 4)  # (layers, heads, B, L, L)
        return self.image_rows(per_head, text_positions).permute(0, 2, 1, 3)

    def rollout_image_attention(self, text_positions) -> Tensor:
        """``(B, N)``: the rolled-out attention from ``text_positions`` to the image."""
        return self.image_rows(self.rollout(), text_positions)


@torch.no_grad()
def attention_maps(model, images: Tensor, input_ids: Tensor) -> AttentionMaps:
    """Run ``model`` (a prefix-fusion :class:`~mmgpt.model.MultimodalGPT`) on a batch in
    eval mode and return every decoder layer's attention, per head (:class:`AttentionMaps`).
    """
    fn = "attention_maps"
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, PrefixFusion):
        raise ValueError(f"{fn}: model must be a MultimodalGPT with prefix fusion (one "
                         f"sequence, whose self-attention reads the image), got "
                         f"fusion={type(fusion).__name__}")
    was_training = model.training
    model.eval()
    try:
        with capture_attention([block.attn for block in model.decoder.blocks]) as captured:
            model(images, input_ids)
    finally:
        model.train(was_training)
    B, T = input_ids.shape
    N = model.num_image_tokens
    placeholder = input_ids == fusion.image_token_id
    _, is_image, text_index = splice_image_tokens(torch.zeros(B, T, 1),
                                                  torch.zeros(B, N, 1), placeholder)
    return AttentionMaps(torch.stack(captured), is_image, text_index)


def attention_rollout(attentions: Tensor, residual: bool = True) -> Tensor:
    """Abnar & Zuidema's attention rollout: ``Â_L @ ... @ Â_2 @ Â_1``.

    ``attentions`` is ``(layers, ..., L, L)``: each layer's attention (heads averaged), each
    row a distribution over keys. With ``residual`` (the paper's choice), each layer is
    ``Â = (A + I) / 2``: half of what a token carries forward is itself, by the residual
    connection. Row ``i`` of the result says how much of position ``i``'s last-layer
    input traces back to each input token, if information mixed only along attention.
    Returns ``(..., L, L)``, rows summing to one.
    """
    fn = "attention_rollout"
    if not isinstance(attentions, Tensor) or not attentions.is_floating_point() \
            or attentions.dim() < 3 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"{fn}: attentions must be a float tensor (layers, ..., L, L) of "
                         f"square attention matrices, got {describe(attentions)}")
    if bool((attentions < 0).any()) or bool(((attentions.sum(-1) - 1).abs() > 1e-4).any()):
        raise ValueError(f"{fn}: attentions must hold attention weights (rows of "
                         f"non-negative numbers that sum to 1)")
    L = attentions.shape[-1]
    eye = torch.eye(L, dtype=attentions.dtype, device=attentions.device)
    result = eye.expand(attentions.shape[1:]).clone()
    for layer in attentions:
        a = (layer + eye) / 2 if residual else layer
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    return result


# --------------------------------------------------------------------------------------
# Where is the object?
# --------------------------------------------------------------------------------------

def object_mask(obj: ShapeObject, image_size: int) -> Tensor:
    """``(image_size, image_size)`` bool: the pixels ``obj`` covers when drawn alone (so
    exactly its pixels, even where another object would overlap it)."""
    if not isinstance(obj, ShapeObject):
        raise TypeError(f"object_mask: obj must be a ShapeObject (from a Scene), got "
                        f"{type(obj).__name__}")
    positive_int(image_size, "image_size", "object_mask")
    pixels = np.asarray(render_scene(Scene(image_size, (obj,))))
    return torch.from_numpy((pixels != np.array(BACKGROUND)).any(-1))


def token_coverage(mask: Tensor, grid: Tuple[int, int]) -> Tensor:
    """The fraction of each image token's cell that ``mask`` covers: ``(rows * cols,)``
    in row-major order (the order of the image tokens).

    ``mask`` is a boolean ``(H, W)`` pixel mask; ``grid`` the ``(rows, cols)`` of image
    tokens, which must divide ``H`` and ``W``. Token ``(r, c)``'s cell is the block of
    pixels ``H/rows × W/cols`` at that place. Its mean is ``mask``'s share of the image.
    """
    fn = "token_coverage"
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise TypeError(f"{fn}: mask must be a 2-D boolean tensor (H, W), got "
                        f"{describe(mask)}")
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2
            and all(is_int(g) and g > 0 for g in grid)):
        raise ValueError(f"{fn}: grid must be (rows, cols) of positive ints, got {grid!r}")
    H, W = mask.shape
    rows, cols = grid
    if H % rows or W % cols:
        raise ValueError(f"{fn}: grid {tuple(grid)} must divide the mask's size {H}x{W}")
    cells = mask.float().reshape(rows, H // rows, cols, W // cols)
    return cells.mean(dim=(1, 3)).reshape(-1)


def object_share(attention: Tensor, coverage: Tensor) -> Tensor:
    """The share of the attention on the image that lands on an object.

    ``attention`` ``(..., N)``: non-negative weights on the ``N`` image tokens (they need
    not sum to one: only the image's part of a row is used). ``coverage`` ``(..., N)``
    (broadcastable): how much of each token's cell is the object (:func:`token_coverage`).
    Returns ``(...)``: ``sum(attention * coverage) / sum(attention)``. Attention spread
    evenly gives ``coverage.mean(-1)``, the object's share of the image: the chance level.
    """
    fn = "object_share"
    for name, x in (("attention", attention), ("coverage", coverage)):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise TypeError(f"{fn}: {name} must be a float tensor (..., N), got "
                            f"{describe(x)}")
    if attention.shape[-1] != coverage.shape[-1]:
        raise ValueError(f"{fn}: attention and coverage must have the same number of image "
                         f"tokens N (last dimension), got {attention.shape[-1]} and "
                         f"{coverage.shape[-1]}")
    if bool((attention < 0).any()):
        raise ValueError(f"{fn}: attention must be non-negative")
    if bool(((coverage < 0) | (coverage > 1)).any()):
        raise ValueError(f"{fn}: coverage must lie in [0, 1] (a fraction of each cell)")
    total = attention.sum(-1)
    if bool((total <= 0).any()):
        raise ValueError(f"{fn}: attention must put some weight on the image in every row")
    return (attention * coverage).sum(-1) / total


# --------------------------------------------------------------------------------------
# What did it answer?
# --------------------------------------------------------------------------------------

@torch.no_grad()
def answer_questions(model, tokenizer, samples: Sequence[dict], *,
                     max_new_tokens: int = 4, batch_size: int = 256) -> List[str]:
    """The model's greedy answer to each sample's question (``image`` and ``question``),
    as text: :func:`mmgpt.model.generate_text` for many samples at once. Samples are
    batched by prompt length, so no prompt is padded."""
    from .model import prompt_ids

    if not isinstance(samples, (list, tuple)) or not samples:
        raise ValueError(f"answer_questions: samples must be a non-empty list of samples, "
                         f"got {describe(samples)}")
    prompts = [prompt_ids(tokenizer, s["question"]) for s in samples]
    answers: List[Optional[str]] = [None] * len(samples)
    by_length: dict = {}
    for k, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(k)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            images = torch.stack([samples[k]["image"] for k in chunk])
            ids = torch.tensor([prompts[k] for k in chunk])
            out = model.generate(images, ids, max_new_tokens, temperature=0,
                                 eos_id=tokenizer.eos_id)
            for k, row in zip(chunk, out[:, ids.shape[1]:].tolist()):
                if tokenizer.eos_id in row:
                    row = row[:row.index(tokenizer.eos_id)]
                answers[k] = tokenizer.decode(row, skip_special=True)
    return answers  # type: ignore[return-value]


def confusion_matrix(y_true: Sequence, y_pred: Sequence, labels: Optional[Sequence] = None
                     ) -> np.ndarray:
    """Counts ``C[i, j]``: samples whose true answer is ``labels[i]`` and predicted answer
    ``labels[j]``, as ``sklearn.metrics.confusion_matrix`` (same arguments and result:
    ``labels`` defaults to the sorted set of all answers; a sample with a true or
    predicted answer outside ``labels`` is not counted)."""
    fn = "confusion_matrix"
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{fn}: y_pred must have one answer per y_true answer, got "
                         f"{len(y_pred)} and {len(y_true)}")
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred))
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"{fn}: labels must be a non-empty list without repeats, got "
                         f"{labels!r}")
    where = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        if t in where and p in where:
            matrix[where[t], where[p]] += 1
    return matrix


# --------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------

def overlay_attention(ax, image: Tensor, weights: Tensor, grid: Tuple[int, int], *,
                      alpha: float = 0.55, cmap: str = "magma", title: Optional[str] = None,
                      box: Optional[ShapeObject] = None):
    """Draw ``image`` ``(3, H, W)`` with ``weights`` (``N = rows * cols`` image-token
    weights, row-major) laid over it as a heat map, each token on its cell; ``box``
    outlines an object. Returns the heat map's ``AxesImage`` (for a colour bar)."""
    fn = "overlay_attention"
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"{fn}: image must be a (3, H, W) tensor, got {describe(image)}")
    rows, cols = grid
    if not isinstance(weights, Tensor) or weights.numel() != rows * cols:
        raise ValueError(f"{fn}: weights must hold rows * cols = {rows * cols} numbers, got "
                         f"{describe(weights)}")
    H, W = image.shape[1:]
    heat = weights.detach().float().reshape(rows, cols).cpu().numpy()
    ax.imshow(image.detach().permute(1, 2, 0).cpu().numpy(), extent=(0, W, H, 0))
    shown = ax.imshow(heat, cmap=cmap, alpha=alpha, extent=(0, W, H, 0),
                      interpolation="nearest", vmin=0)
    if box is not None:
        import matplotlib.patches as patches

        r = box.radius
        ax.add_patch(patches.Rectangle((box.x - r, box.y - r), 2 * r, 2 * r, fill=False,
                                       edgecolor="white", linewidth=1.2, linestyle="--"))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return shown


def plot_confusion(ax, matrix: np.ndarray, labels: Sequence[str], *,
                   title: Optional[str] = None, cmap: str = "Blues"):
    """A confusion matrix as a heat map with its counts written in; rows are the true
    answers, columns the model's."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape != (len(labels), len(labels)):
        raise ValueError(f"plot_confusion: matrix must be (K, K) for K={len(labels)} labels, "
                         f"got shape {matrix.shape}")
    ax.imshow(matrix, cmap=cmap, vmin=0)
    peak = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > peak / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("model's answer", fontsize=8)
    ax.set_ylabel("true answer", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
