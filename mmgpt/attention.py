"""Attention from scratch: scaled dot-product attention, masks, multi-head attention, KV cache.

Chapters 05 and 06 derive all of this. What the module holds:

* :func:`softmax`: a numerically safe softmax (subtract the row maximum first). A row whose
  entries are all ``-inf`` (every key masked out) gives **zeros**, not the NaNs of
  ``torch.softmax``; that is what ``F.scaled_dot_product_attention`` returns for such rows in
  PyTorch 2.x (checked on 2.13, CPU), so a fully masked query gets a zero output and a zero
  gradient.
* :func:`attention_weights`: ``softmax(q @ k^T * scale + mask)``, the ``(..., L, S)`` matrix
  the book plots;
* :func:`scaled_dot_product_attention`: ``attention_weights(...) @ v`` with exactly the
  arguments and results of ``F.scaled_dot_product_attention`` (a boolean mask is ``True``
  where attention is *allowed*; a float mask is *added* to the scores; ``is_causal``;
  ``scale``; dropout on the weights; any leading batch dimensions, broadcast), plus
  ``return_weights=True`` to get the weights too;
* masks as boolean tensors, ``True`` = may attend: :func:`causal_mask`,
  :func:`padding_mask` (``True`` = real token) and :func:`prefix_causal_mask` (image tokens
  see each other, text is causal: a prefix language model). One exception, kept for
  compatibility with ``nn.MultiheadAttention``: ``MultiHeadAttention``'s
  ``key_padding_mask`` is ``True`` at *padding* (pass ``~padding_mask(lengths)``);
* :class:`MultiHeadAttention`: self- and cross-attention with ``num_heads`` heads computed in
  parallel (one reshape, no loop over heads), masks, dropout and a :class:`KVCache` for
  generation. :meth:`MultiHeadAttention.from_torch` copies the weights of a
  ``nn.MultiheadAttention``; ``fused=True`` runs PyTorch's fused kernel
  (``F.scaled_dot_product_attention``: flash / memory-efficient attention on a GPU) instead of
  the book's function, which stays the reference.

The seed article writes attention as ``softmax(softmax(QK^T/sqrt(d))) X``. That applies the
softmax twice and mixes the inputs ``X`` instead of the values ``V``; the right formula, used
here, is ``softmax(QK^T / sqrt(d_k)) V`` (Vaswani et al., 2017).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks

__all__ = [
    "softmax",
    "causal_mask",
    "padding_mask",
    "prefix_causal_mask",
    "attention_weights",
    "scaled_dot_product_attention",
    "KVCache",
    "MultiHeadAttention",
]


# --------------------------------------------------------------------------------------
# Softmax
# --------------------------------------------------------------------------------------

def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """``exp(x) / exp(x).sum(dim)``, computed safely; equal to ``torch.softmax`` elsewhere.

    * The maximum along ``dim`` is subtracted before ``exp`` (softmax does not change when a
      constant is added to every entry), so nothing overflows: the largest entry becomes
      ``exp(0) = 1``.
    * A row that is entirely ``-inf`` (a query that may attend to no key) returns **zeros**.
      ``torch.softmax`` returns NaN there (0/0); ``F.scaled_dot_product_attention`` returns
      a zero output, and zeros here give exactly that. Its gradient is zero too.
    * ``float16``/``bfloat16`` input is computed in ``float32`` and rounded back once.
    """
    dtype = _checks.tensor(x, "x", "softmax", floating=True).dtype
    if dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    peak = x.amax(dim=dim, keepdim=True).detach()  # the shift needs no gradient
    peak = peak.masked_fill(peak == float("-inf"), 0.0)  # all -inf: keep exp(-inf) = 0
    e = torch.exp(x - peak)
    total = e.sum(dim=dim, keepdim=True)
    total = total.masked_fill(total == 0, 1.0)  # fully masked row: 0 / 1 = 0, not 0 / 0
    return (e / total).to(dtype)


# --------------------------------------------------------------------------------------
# Masks (boolean, True = may attend)
# --------------------------------------------------------------------------------------

def causal_mask(L: int, S: Optional[int] = None, device=None, *, offset: int = 0) -> Tensor:
    """Boolean ``(L, S)`` mask, ``True`` where query ``i`` may attend to key ``j <= i + offset``.

    ``S`` defaults to ``L``. With ``offset=0`` this is the mask ``is_causal=True`` means in
    ``F.scaled_dot_product_attention`` (aligned at the top left, also when ``L != S``).
    When the ``L`` queries are the *last* ``L`` of ``S`` positions (decoding with a KV
    cache), pass ``offset=S - L``: query ``i`` sits at position ``i + offset``.
    """
    fn = "causal_mask"
    L = _checks.integer(L, "L", fn, minimum=0)
    S = L if S is None else _checks.integer(S, "S", fn, minimum=0)
    offset = _checks.integer(offset, "offset", fn)
    return torch.ones(L, S, dtype=torch.bool, device=device).tril(diagonal=offset)


def padding_mask(lengths: Union[Tensor, Sequence[int]], max_len: Optional[int] = None) -> Tensor:
    """Boolean ``(B, T)`` mask, ``True`` at the first ``lengths[b]`` positions (real tokens).

    ``T`` is ``max_len`` or, by default, the longest length. Note that
    ``nn.MultiheadAttention``'s ``key_padding_mask`` (and :class:`MultiHeadAttention`'s) is
    the opposite, ``True`` at the padding: pass ``~padding_mask(lengths)`` there.
    """
    fn = "padding_mask"
    if not isinstance(lengths, Tensor):
        if not all(_checks.is_int(n) for n in lengths):
            raise TypeError(f"{fn}: lengths must be a 1-D integer tensor or a list of ints, "
                            f"got {lengths!r}")
        lengths = torch.tensor(list(lengths), dtype=torch.long)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"{fn}: lengths must be a 1-D integer tensor, got shape "
                         f"{tuple(lengths.shape)} and dtype {lengths.dtype}")
    if (lengths < 0).any():
        raise ValueError(f"{fn}: lengths must be >= 0, got {lengths.tolist()}")
    longest = int(lengths.max()) if lengths.numel() else 0
    T = longest if max_len is None else _checks.integer(max_len, "max_len", fn, minimum=0)
    if longest > T:
        raise ValueError(f"{fn}: max_len={T} is shorter than the longest length {longest}")
    return torch.arange(T, device=lengths.device) < lengths[:, None]


def prefix_causal_mask(num_prefix: int, L: int, device=None) -> Tensor:
    """Boolean ``(L, L)`` mask of a prefix language model, ``True`` = may attend.

    The first ``num_prefix`` positions (the image tokens) see each other in both directions;
    every later position (text) sees the whole prefix and the text before it (causal).
    ``num_prefix=0`` is the plain causal mask, ``num_prefix=L`` attends everywhere.
    """
    fn = "prefix_causal_mask"
    L = _checks.integer(L, "L", fn, minimum=0)
    num_prefix = _checks.integer(num_prefix, "num_prefix", fn, minimum=0)
    if num_prefix > L:
        raise ValueError(f"{fn}: num_prefix must be at most L={L}, got {num_prefix}")
    mask = causal_mask(L, device=device)
    mask[:num_prefix, :num_prefix] = True
    return mask


# --------------------------------------------------------------------------------------
# Scaled dot-product attention
# --------------------------------------------------------------------------------------

# The rank q, k and v may have: any leading (batch, heads) dimensions, then (length, features).
_QKV = dict(ndim=range(2, 65), layout="a tensor of at least 2 dimensions (..., length, features)",
            floating=True)


def attention_weights(q: Tensor, k: Tensor, attn_mask: Optional[Tensor] = None,
                      is_causal: bool = False, scale: Optional[float] = None) -> Tensor:
    """The attention matrix ``softmax(q @ k^T * scale + mask)``, of shape ``(..., L, S)``.

    ``q`` is ``(..., L, E)``, ``k`` is ``(..., S, E)`` (leading dimensions broadcast), and
    ``scale`` defaults to ``1 / sqrt(E)``. ``attn_mask`` is boolean (``True`` = may attend;
    the others get ``-inf``) or float (added to the scores); ``is_causal=True`` uses
    :func:`causal_mask` instead. Row ``i`` says how query ``i`` shares its attention among
    the ``S`` keys: non-negative, summing to 1 (or all zero if every key is masked out).
    """
    fn = "attention_weights"
    _checks.tensor(q, "q", fn, **_QKV)
    _checks.tensor(k, "k", fn, **_QKV)
    _checks.same(fn, "dtype", TypeError, q=q.dtype, k=k.dtype)
    _checks.same(fn, "head dimension (last dim)", q=q.shape[-1], k=k.shape[-1])
    L, S = q.shape[-2], k.shape[-2]
    shape = _checks.broadcast(fn, "batch dimensions", q=q.shape[:-2], k=k.shape[:-2]) + (L, S)
    if attn_mask is not None and is_causal:
        raise ValueError(f"{fn}: pass either attn_mask or is_causal=True, not both (as in "
                         f"F.scaled_dot_product_attention); combine them into one mask")
    if attn_mask is not None:
        _checks.attention_mask(attn_mask, "attn_mask", fn, shape, q.dtype)

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (..., L, S): how well query i matches key j
    if is_causal:
        attn_mask = causal_mask(L, S, device=q.device)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask  # a float32 mask may promote bf16 scores: fine
    return softmax(scores, dim=-1).to(q.dtype)


def scaled_dot_product_attention(
        q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None,
        dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None, *,
        enable_gqa: bool = False, return_weights: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """``softmax(q @ k^T * scale + mask) @ v``, as ``F.scaled_dot_product_attention`` computes it.

    Shapes: ``q`` ``(..., L, E)``, ``k`` ``(..., S, E)``, ``v`` ``(..., S, Ev)`` -> output
    ``(..., L, Ev)``; leading (batch, heads) dimensions broadcast. Arguments as in PyTorch:

    * ``attn_mask``: boolean, ``True`` where query ``i`` may attend to key ``j``, or float,
      added to the scores (``-inf`` forbids); it must broadcast to ``(..., L, S)``;
    * ``is_causal``: query ``i`` sees keys ``0..i`` (top-left aligned, see
      :func:`causal_mask`); not together with ``attn_mask``;
    * ``dropout_p``: each weight is zeroed with this probability and the rest scaled by
      ``1 / (1 - dropout_p)`` (``F.dropout``; draws the same random numbers as PyTorch's
      math kernel, so the same seed gives the same result);
    * ``scale``: multiplies ``q @ k^T``; ``None`` means ``1 / sqrt(E)``;
    * ``enable_gqa``: grouped-query attention, ``k``/``v`` with fewer heads (dim -3).

    A query whose keys are all masked out gets a zero output (as in PyTorch 2.13).
    With ``return_weights=True`` the result is ``(output, weights)``, the weights of shape
    ``(..., L, S)`` being the ones multiplied with ``v`` (after dropout, like
    ``nn.MultiheadAttention``'s).
    """
    fn = "scaled_dot_product_attention"
    dropout_p = _checks.closed_probability(dropout_p, "dropout_p", fn)
    if enable_gqa:  # grouped-query attention: each key/value head serves a group of query heads
        k, v = _repeat_kv(k, q, "k", fn), _repeat_kv(v, q, "v", fn)
    weights = attention_weights(q, k, attn_mask, is_causal, scale)  # (..., L, S); checks q, k
    _checks.tensor(v, "v", fn, **_QKV)
    _checks.same(fn, "dtype", TypeError, q=q.dtype, k=k.dtype, v=v.dtype)
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"{fn}: v must have as many positions as k (dim -2), got k "
                         f"{tuple(k.shape)} and v {tuple(v.shape)}")
    _checks.broadcast(fn, "batch dimensions", v=v.shape[:-2], q=q.shape[:-2], k=k.shape[:-2])

    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    out = weights @ v  # (..., L, Ev): each output mixes the values, weighted
    return (out, weights) if return_weights else out


def _repeat_kv(t: Tensor, q: Tensor, name: str, fn: str) -> Tensor:
    """Grouped-query attention: repeat each key/value head for its group of query heads."""
    heads = dict(ndim=range(3, 65), layout="a tensor of at least 3 dimensions (..., heads, "
                                            "length, features) for enable_gqa")
    _checks.tensor(q, "q", fn, **heads)
    _checks.tensor(t, name, fn, **heads)
    if q.shape[-3] % t.shape[-3]:
        raise ValueError(f"{fn}: with enable_gqa the number of query heads ({q.shape[-3]}) "
                         f"must be a multiple of {name}'s heads ({t.shape[-3]})")
    return t.repeat_interleave(q.shape[-3] // t.shape[-3], dim=-3)


# --------------------------------------------------------------------------------------
# Key/value cache
# --------------------------------------------------------------------------------------

class KVCache:
    """The keys and values a layer has already computed, so decoding computes only new ones.

    ``k`` and ``v`` have shape ``(B, heads, T, head_dim)`` (``None`` while empty);
    :meth:`append` adds the new positions along ``T`` and returns everything so far;
    ``len(cache)`` is ``T``. One cache per attention layer. For cross-attention the cache
    holds the projected context, computed once (see :class:`MultiHeadAttention`).
    """

    def __init__(self) -> None:
        self.k: Optional[Tensor] = None
        self.v: Optional[Tensor] = None
        self.cross = False  # set by MultiHeadAttention when it holds a projected context

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def __repr__(self) -> str:
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(length={len(self)}, k_shape={shape})"

    def reset(self) -> None:
        """Forget everything (start a new sequence)."""
        self.k = self.v = None
        self.cross = False

    def append(self, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """Add ``k``, ``v`` of shape ``(B, heads, T_new, head_dim)``; return all keys and values."""
        fn = "KVCache.append"
        _checks.shape(k, "k", fn, "B", "heads", "T", "head_dim")
        _checks.shape(v, "v", fn, *k.shape[:3], "head_dim")
        if self.k is None:
            self.k, self.v = k, v
        else:
            if not (k.shape[:2] == self.k.shape[:2] and k.shape[3] == self.k.shape[3]
                    and v.shape[3] == self.v.shape[3]):
                raise ValueError(f"{fn}: this step (k {tuple(k.shape)}, v {tuple(v.shape)}) does "
                                 f"not continue the cached keys and values (k {tuple(self.k.shape)}"
                                 f", v {tuple(self.v.shape)}): B, heads and head_dim must match")
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v


# --------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------

def _as_float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean (True = may attend) -> additive float mask (0 or -inf); float masks unchanged."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, float("-inf"))


class MultiHeadAttention(nn.Module):
    """Multi-head attention: ``num_heads`` attentions side by side, each in its own slice.

    ``q = x W_q``, ``k = c W_k``, ``v = c W_v`` (``c = x`` for self-attention, or another
    sequence, the *context*, for cross-attention), each cut into ``num_heads`` heads by one
    reshape; every head attends on its own; the heads' outputs are concatenated and mixed by
    ``W_o`` (``out_proj``). The constructor mirrors ``nn.MultiheadAttention``'s (``kdim``,
    ``vdim``: the context's feature sizes) but inputs are always batch-first ``(B, L, dim)``.

    ``fused=True`` (an attribute too) computes the attention with PyTorch's fused
    ``F.scaled_dot_product_attention`` (flash or memory-efficient kernels on a GPU); the
    default runs the book's :func:`scaled_dot_product_attention`. Both give the same result.
    Asking for the weights (``need_weights=True``) always uses the book's function, since
    fused kernels never form the weight matrix.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: Optional[int] = None, vdim: Optional[int] = None,
                 fused: bool = False) -> None:
        super().__init__()
        fn = "MultiHeadAttention"
        dim = _checks.positive_int(dim, "dim", fn)
        num_heads = _checks.positive_int(num_heads, "num_heads", fn)
        if dim % num_heads:
            raise ValueError(f"{fn}: dim must be divisible by num_heads, got dim={dim} and "
                             f"num_heads={num_heads} (remainder {dim % num_heads})")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.kdim = dim if kdim is None else _checks.positive_int(kdim, "kdim", fn)
        self.vdim = dim if vdim is None else _checks.positive_int(vdim, "vdim", fn)
        self.dropout = _checks.closed_probability(dropout, "dropout", fn)
        self.fused = bool(fused)
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"fused={self.fused}")

    def split_heads(self, t: Tensor) -> Tensor:
        """``(B, T, dim)`` -> ``(B, heads, T, head_dim)``; head ``h`` owns features
        ``h * head_dim`` to ``(h + 1) * head_dim - 1``. A view: nothing is copied."""
        B, T, _ = t.shape
        return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, t: Tensor) -> Tensor:
        """``(B, heads, T, head_dim)`` -> ``(B, T, dim)``: the heads' outputs side by side."""
        B, _, T, _ = t.shape
        return t.transpose(1, 2).reshape(B, T, self.dim)

    def _keys_values(self, x: Tensor, context: Optional[Tensor],
                     cache: Optional[KVCache]) -> Tuple[Tensor, Tensor, int]:
        """Keys and values (B, heads, S, head_dim) for this call, and the queries' offset.

        Self-attention projects ``x`` (and appends it to the cache: the new queries then sit
        ``offset = len(cache)`` positions in). Cross-attention projects ``context``, or reuses
        the projected context a cache already holds.
        """
        fn = "MultiHeadAttention.forward"
        if context is None and (cache is None or not cache.cross):  # self-attention
            if self.kdim != self.dim or self.vdim != self.dim:
                raise ValueError(f"{fn}: self-attention needs kdim == vdim == dim, but this "
                                 f"layer has kdim={self.kdim}, vdim={self.vdim}, "
                                 f"dim={self.dim}; pass a context")
            k, v = self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))
            if cache is None:
                return k, v, 0
            offset = len(cache)
            return (*cache.append(k, v), offset)
        if cache is not None and len(cache) > 0:  # cross-attention, context already cached
            if not cache.cross:
                raise ValueError(f"{fn}: this cache holds self-attention keys; a "
                                 f"cross-attention layer needs its own KVCache")
            return cache.k, cache.v, 0
        if self.kdim != self.vdim:
            raise ValueError(f"{fn}: one context cannot feed kdim={self.kdim} and "
                             f"vdim={self.vdim}; use kdim == vdim")
        _checks.shape(context, "context", fn, "B", "length", self.kdim)
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"{fn}: context has batch size {context.shape[0]} but x has "
                             f"{x.shape[0]}")
        k, v = self.split_heads(self.k_proj(context)), self.split_heads(self.v_proj(context))
        if cache is not None:
            cache.append(k, v)
            cache.cross = True
        return k, v, 0

    def _mask(self, attn_mask, key_padding_mask, is_causal: bool, B: int, L: int, S: int,
              offset: int, dtype: torch.dtype, device) -> Tuple[Optional[Tensor], bool]:
        """One mask for (B, heads, L, S) from the three ways of saying it, or the causal flag.

        Returns ``(mask, causal)``: ``causal=True`` (mask ``None``) when the plain causal mask
        is all there is, so a fused kernel can skip building it.
        """
        fn = "MultiHeadAttention.forward"
        shape = torch.Size((B, self.num_heads, L, S))
        masks = []
        if attn_mask is not None:
            masks.append(_checks.attention_mask(attn_mask, "attn_mask", fn, shape, dtype))
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, Tensor) or key_padding_mask.shape != (B, S):
                raise ValueError(f"{fn}: key_padding_mask must have shape (B, S) = {(B, S)} "
                                 f"(True = padding), got {_checks.describe(key_padding_mask)}")
            kpm = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
            masks.append(~kpm if kpm.dtype == torch.bool else kpm)
        if is_causal:
            if not masks and offset == 0 and L == S:
                return None, True
            if L > 1 or offset < S - 1:  # one query at the end sees every key: no mask
                masks.append(causal_mask(L, S, device=device, offset=offset))
        if not masks:
            return None, False
        if all(m.dtype == torch.bool for m in masks):
            mask = masks[0]
            for m in masks[1:]:
                mask = mask & m
            return mask, False
        mask = _as_float_mask(masks[0], dtype)
        for m in masks[1:]:
            mask = mask + _as_float_mask(m, dtype)
        return mask, False

    def forward(self, x: Tensor, context: Optional[Tensor] = None, *,
                attn_mask: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False, cache: Optional[KVCache] = None,
                need_weights: bool = False, average_attn_weights: bool = True):
        """Attend from ``x`` ``(B, L, dim)`` to ``x`` itself or to ``context`` ``(B, S, kdim)``.

        * ``attn_mask``: broadcastable to ``(B, heads, L, S)`` (e.g. ``(L, S)``); boolean
          ``True`` = **may attend** (as in :func:`scaled_dot_product_attention`; the
          *opposite* of ``nn.MultiheadAttention``'s boolean ``attn_mask``) or float, added.
        * ``key_padding_mask``: ``(B, S)``, boolean ``True`` = **padding** (ignored), as in
          ``nn.MultiheadAttention``; or float, added.
        * ``is_causal``: each query sees only keys at or before its own position; combined
          with the masks above if given. With a cache, positions continue the cached ones.
        * ``cache``: a :class:`KVCache`. Self-attention appends this call's keys and values
          and attends over everything cached, so feeding a sequence piece by piece gives the
          outputs of one full pass. Cross-attention projects ``context`` into an empty cache
          once; later calls reuse it (``context`` may then be ``None``).
        * ``need_weights``: also return the attention weights, averaged over heads
          ``(B, L, S)`` or, with ``average_attn_weights=False``, per head ``(B, heads, L, S)``.

        Returns the output ``(B, L, dim)``, or ``(output, weights)``.
        """
        _checks.shape(x, "x", "MultiHeadAttention.forward", "B", "length", self.dim)
        B, L, _ = x.shape
        q = self.split_heads(self.q_proj(x))  # (B, heads, L, head_dim)
        k, v, offset = self._keys_values(x, context, cache)  # (B, heads, S, head_dim)
        mask, causal = self._mask(attn_mask, key_padding_mask, is_causal, B, L, k.shape[2],
                                  offset, q.dtype, q.device)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = scaled_dot_product_attention(
                q, k, v, mask, dropout_p, causal, return_weights=True)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        elif self.fused:
            out = F.scaled_dot_product_attention(q, k, v, mask, dropout_p, causal)
        else:
            out = scaled_dot_product_attention(q, k, v, mask, dropout_p, causal)
        out = self.out_proj(self.merge_heads(out))  # (B, L, dim)
        return (out, weights) if need_weights else out

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A copy of a batch-first ``nn.MultiheadAttention``: the same weights, in this class.

        Given the same inputs (remember that boolean ``attn_mask`` means the opposite there),
        the outputs and the returned weights are equal. One exception: a query that may attend
        to no key at all gets zero weights here, so its output is ``out_proj.bias``;
        ``nn.MultiheadAttention`` returns NaN for it on some of its paths (2.13: when asked
        for weights, and on its no-grad fast path) and zeros on others. ``add_bias_kv`` and
        ``add_zero_attn`` have no counterpart here and raise ``ValueError``.
        """
        fn = "MultiHeadAttention.from_torch"
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"{fn}: m must be an nn.MultiheadAttention, got {type(m).__name__}")
        if not m.batch_first:
            raise ValueError(f"{fn}: m must be built with batch_first=True (this module takes "
                             f"(B, L, dim)); the weights are the same, so build it that way")
        if m.bias_k is not None or m.add_zero_attn:
            raise ValueError(f"{fn}: add_bias_kv and add_zero_attn are not supported, got "
                             f"add_bias_kv={m.bias_k is not None}, add_zero_attn={m.add_zero_attn}")
        bias = m.in_proj_bias is not None
        new = cls(m.embed_dim, m.num_heads, dropout=m.dropout, bias=bias, kdim=m.kdim,
                  vdim=m.vdim)
        if m._qkv_same_embed_dim:
            wq, wk, wv = m.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        ref = m.out_proj.weight
        new.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for layer, w in ((new.q_proj, wq), (new.k_proj, wk), (new.v_proj, wv)):
                layer.weight.copy_(w)
            new.out_proj.weight.copy_(m.out_proj.weight)
            if bias:
                for layer, b in zip((new.q_proj, new.k_proj, new.v_proj), m.in_proj_bias.chunk(3)):
                    layer.bias.copy_(b)
                new.out_proj.bias.copy_(m.out_proj.bias)
        new.train(m.training)
        return new
