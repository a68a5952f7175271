"""The Transformer decoder: layer norm, MLP, pre-norm blocks, a small GPT, and sampling.

Chapter 07 builds these on top of Chapter 06's :class:`~mmgpt.attention.MultiHeadAttention`:

* :func:`layer_norm` equals ``F.layer_norm`` and :class:`LayerNorm` equals ``nn.LayerNorm``
  (same constructor, parameters and state dict), gradients included;
* :class:`MLP`: the position-wise feed-forward network (expand 4x, GELU, project back);
* :class:`Block`: one *pre-norm* decoder block,
  ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``, with a causal mask and an optional
  KV cache;
* :class:`GPTConfig` and :class:`GPT`: token and learned position embeddings, a stack of
  blocks, a final layer norm and a language-model head whose weight is *the same tensor*
  as the token embedding (tied). ``forward`` returns logits and, given targets, the
  cross-entropy loss; a sequence longer than the context raises ``ValueError``. Its three
  stages are methods, :meth:`GPT.embed`, :meth:`GPT.run_blocks` and :meth:`GPT.logits`,
  that Chapter 08's fusions call in their own order;
* :func:`filter_logits` (top-k, top-p) and :func:`sample_next` (greedy, temperature,
  top-k, top-p) choose the next token; :meth:`GPT.generate` repeats that, with or without
  a KV cache, and the two give the same tokens.

The code follows nanoGPT (Karpathy) closely, with the book's own attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import integer, is_int, is_number, number, positive_int, probability, tensor
from .attention import KVCache, MultiHeadAttention
from .loss import IGNORE_INDEX

__all__ = [
    "layer_norm",
    "LayerNorm",
    "MLP",
    "Block",
    "GPTConfig",
    "GPT",
    "init_weights",
    "check_sampling",
    "filter_logits",
    "sample_next",
]

ShapeLike = Union[int, Sequence[int], torch.Size]


# --------------------------------------------------------------------------------------
# Layer norm
# --------------------------------------------------------------------------------------

def _normalized_shape(normalized_shape: ShapeLike, fn: str) -> Tuple[int, ...]:
    """``8`` -> ``(8,)``; a sequence of positive ints stays; anything else raises."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if not shape or not all(is_int(n) and n >= 1 for n in shape):
        raise TypeError(f"{fn}: normalized_shape must be a positive int or a non-empty "
                        f"sequence of positive ints, got {normalized_shape!r}")
    return shape


def layer_norm(x: torch.Tensor, normalized_shape: ShapeLike,
               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5) -> torch.Tensor:
    """Layer normalization with the semantics of ``torch.nn.functional.layer_norm``.

    Each vector over the last ``len(normalized_shape)`` dimensions is shifted to mean 0
    and scaled to variance 1 (the *biased* variance, divided by n), then multiplied by
    ``weight`` and shifted by ``bias`` (both of shape ``normalized_shape``, optional):

        y = (x - mean) / sqrt(var + eps) * weight + bias

    Unlike batch norm, nothing is shared between the vectors of a batch or a sequence,
    so a token is normalized the same way in training and at inference, alone or not.
    """
    fn = "layer_norm"
    tensor(x, "x", fn)
    shape = _normalized_shape(normalized_shape, fn)
    if tuple(x.shape[x.dim() - len(shape):]) != shape or x.dim() < len(shape):
        raise ValueError(f"{fn}: x's last dimensions must be normalized_shape={list(shape)}, "
                         f"got x of shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != shape:
            raise ValueError(f"{fn}: {name} must have shape normalized_shape="
                             f"{list(shape)}, got {tuple(p.shape)}")
    number(eps, "eps", fn, low=0)
    dims = tuple(range(-len(shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).pow(2).mean(dim=dims, keepdim=True)  # biased, as PyTorch's
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class LayerNorm(nn.Module):
    """Layer norm with ``nn.LayerNorm``'s constructor, parameters and state dict.

    ``LayerNorm(dim)`` normalizes the last dimension; ``weight`` starts at ones and
    ``bias`` at zeros. ``elementwise_affine=False`` has neither, ``bias=False`` no bias.
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]

    def __init__(self, normalized_shape: ShapeLike, eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.normalized_shape = _normalized_shape(normalized_shape, "LayerNorm")
        self.eps = number(eps, "eps", "LayerNorm", low=0)
        self.elementwise_affine = elementwise_affine
        factory = dict(device=device, dtype=dtype)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, **factory))
            self.bias = (nn.Parameter(torch.zeros(self.normalized_shape, **factory))
                         if bias else None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


# --------------------------------------------------------------------------------------
# MLP and block
# --------------------------------------------------------------------------------------

class MLP(nn.Module):
    """The feed-forward half of a block, applied to every position on its own.

    ``dim -> hidden -> dim`` with a GELU in between (``hidden = 4 * dim`` by default, as
    in GPT-2), then dropout. Attention mixes information *between* positions; the MLP
    transforms each position's vector, and holds two thirds of a block's parameters.
    """

    def __init__(self, dim: int, hidden: Optional[int] = None, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        positive_int(dim, "dim", "MLP")
        hidden = 4 * dim if hidden is None else positive_int(hidden, "hidden", "MLP")
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(probability(dropout, "dropout", "MLP"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """One pre-norm Transformer decoder block (GPT-2 style).

    ::

        x = x + dropout(attn(ln_1(x)))    # tokens look at earlier tokens
        x = x + mlp(ln_2(x))              # each token is transformed on its own

    The normalization sits *inside* each branch, so the residual stream ``x`` itself is
    never normalized: at initialization every block is close to the identity, and the
    gradient reaches the first layers undiminished through the additions.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 mlp_hidden: Optional[int] = None, fused: bool = False):
        super().__init__()
        self.ln_1 = LayerNorm(dim, bias=bias)
        self.attn = MultiHeadAttention(dim, num_heads, dropout=dropout, bias=bias,
                                       fused=fused)
        self.dropout = nn.Dropout(probability(dropout, "dropout", "Block"))
        self.ln_2 = LayerNorm(dim, bias=bias)
        self.mlp = MLP(dim, mlp_hidden, dropout=dropout, bias=bias)

    def forward(self, x: torch.Tensor, *, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = True, cache: Optional[KVCache] = None) -> torch.Tensor:
        """``x`` (B, T, dim) -> (B, T, dim), causal by default.

        ``attn_mask`` (True = may attend) is combined with the causal mask, or used alone
        with ``is_causal=False`` (a prefix-LM mask, say). With ``cache`` the tokens of
        ``x`` come after those already cached.
        """
        a = self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal, cache=cache)
        x = x + self.dropout(a)
        return x + self.mlp(self.ln_2(x))


# --------------------------------------------------------------------------------------
# GPT
# --------------------------------------------------------------------------------------

@dataclass
class GPTConfig:
    """The shape of a :class:`GPT`.

    ``context_length`` is the longest sequence the model reads (the size of its position
    table). ``tie_weights`` makes the output head share the token embedding's matrix.
    ``fused`` runs attention with ``F.scaled_dot_product_attention`` instead of the
    book's own function (same result, faster).
    """

    vocab_size: int
    context_length: int = 64
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.0
    tie_weights: bool = True
    bias: bool = True
    fused: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "dim", "num_layers", "num_heads"):
            positive_int(getattr(self, name), name, "GPTConfig")
        if self.dim % self.num_heads:
            raise ValueError(f"GPTConfig: dim must be divisible by num_heads, got "
                             f"dim={self.dim} and num_heads={self.num_heads}")
        probability(self.dropout, "dropout", "GPTConfig")


def init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation, for ``model.apply(init_weights)``: linear and embedding
    weights from N(0, 0.02), biases at zero."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class GPT(nn.Module):
    """A GPT-style decoder-only language model.

    ``forward(idx)`` maps token ids ``(B, T)`` to next-token logits ``(B, T, vocab_size)``:
    the logits at position ``t`` are the model's guess for token ``t + 1``, made from
    tokens ``0..t`` only (a causal mask hides the future). With ``targets`` (``idx``
    shifted left by one, ``-100`` where there is nothing to predict) it also returns the
    mean cross-entropy.

    ``forward`` is three stages, each a method: :meth:`embed` (token plus position
    embeddings), :meth:`run_blocks` (the blocks, causal, with an optional mask and KV
    cache) and :meth:`logits` (final layer norm and head). A fusion of Chapter 08 calls
    them in its own way: it splices the image tokens in after the token embedding, or
    runs a cross-attention layer between the blocks, or adds the image before the head.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT: config must be a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.dim)
        self.pos_emb = nn.Embedding(c.context_length, c.dim)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.dim, c.num_heads, c.dropout, c.bias, fused=c.fused)
            for _ in range(c.num_layers))
        self.ln_f = LayerNorm(c.dim, bias=c.bias)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.apply(init_weights)
        for block in self.blocks:  # GPT-2: residual branches start small, 1/sqrt(2L)
            for linear in (block.mlp.proj, block.attn.out_proj):
                nn.init.normal_(linear.weight, std=0.02 / math.sqrt(2 * c.num_layers))
        if c.tie_weights:
            self.head.weight = self.tok_emb.weight  # one tensor, two uses

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters, a tied matrix counted once.

        ``non_embedding=True`` leaves out the embedding tables (and an untied head), the
        count that scaling laws use.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
            if not self.config.tie_weights:
                n -= self.head.weight.numel()
        return n

    def new_caches(self) -> List[KVCache]:
        """One empty :class:`~mmgpt.attention.KVCache` per block, for ``forward``."""
        return [KVCache() for _ in self.blocks]

    def _check_idx(self, idx, past: int, fn: str, check_length: bool = True) -> None:
        tensor(idx, "idx", fn)
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"{fn}: idx must be 2-D (batch, time) with at least one "
                             f"token, got shape {tuple(idx.shape)}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{fn}: idx must hold integer token ids (int64), got dtype "
                            f"{idx.dtype}")
        limit, total = self.config.context_length, past + idx.shape[1]
        if check_length and total > limit:
            cached = f" ({idx.shape[1]} new + {past} cached)" if past else ""
            raise ValueError(f"{fn}: the sequence has {total} tokens{cached}, more than "
                             f"the model's context_length={limit}; crop it to the last "
                             f"{limit} tokens (generate() does)")

    def embed(self, idx: torch.Tensor, past: int = 0) -> torch.Tensor:
        """Token ids ``(B, T)`` -> their token plus position embeddings ``(B, T, dim)``,
        the first token at position ``past`` (the number of tokens already cached)."""
        return self.add_positions(self.tok_emb(idx), past)

    def add_positions(self, x: torch.Tensor, past: int = 0) -> torch.Tensor:
        """``x`` ``(B, T, dim)`` plus the embeddings of positions ``past .. past + T - 1``,
        then dropout: what :meth:`embed` does after the token lookup."""
        T, limit = x.shape[1], self.pos_emb.num_embeddings
        if past + T > limit:  # a shape check: no sync
            raise ValueError(f"GPT: the sequence would reach position {past + T}, past the "
                             f"model's {limit} position embeddings")
        positions = torch.arange(past, past + T, device=x.device)
        return self.dropout(x + self.pos_emb(positions))

    def run_blocks(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                   caches: Optional[List[KVCache]] = None, start: int = 0,
                   stop: Optional[int] = None) -> torch.Tensor:
        """``x`` ``(B, T, dim)`` through the blocks ``start .. stop - 1`` (all by default).

        Causal attention, or ``attn_mask`` (True = may attend, ``(B, 1, T, S)``) in its
        place. With ``caches`` (one per block, from :meth:`new_caches`) ``x`` comes after
        the tokens already cached, and its keys and values are added to them.
        """
        if caches is None:
            caches = [None] * len(self.blocks)
        for block, cache in zip(self.blocks[start:stop], caches[start:stop]):
            x = block(x, attn_mask=attn_mask, is_causal=attn_mask is None, cache=cache)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The final layer norm and the head: ``(B, T, dim)`` -> ``(B, T, vocab_size)``."""
        return self.head(self.ln_f(x))

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
                caches: Optional[List[KVCache]] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits ``(B, T, vocab_size)`` and the loss (``None`` without ``targets``).

        ``caches`` (from :meth:`new_caches`) makes the call incremental: the keys and
        values of ``idx`` are appended to the caches, ``idx`` is placed after the tokens
        already cached, and only ``idx``'s positions are computed. Feeding a sequence
        all at once, or in pieces through caches, gives the same logits.
        """
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"GPT.forward: caches must hold one KVCache per block "
                             f"({len(self.blocks)}), got {len(caches)}")
        past = len(caches[0]) if caches else 0
        self._check_idx(idx, past, "GPT.forward")
        x = self.embed(idx, past)
        x = self.run_blocks(x, caches=caches)
        logits = self.logits(x)
        if targets is None:
            return logits, None
        if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape:
            got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else targets
            raise ValueError(f"GPT.forward: targets must have idx's shape "
                             f"{tuple(idx.shape)}, got {got}")
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 use_cache: bool = True, eos_id: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue ``idx`` (B, T) by up to ``max_new_tokens`` tokens, one at a time.

        Each step feeds the model, takes the logits of the last position and picks a
        token with :func:`sample_next` (``temperature=0`` is greedy). Without a cache,
        every step recomputes the whole sequence; with one (``use_cache=True``), the
        prompt is run once and each later step feeds only the newest token, reusing the
        keys and values of the others. Both see the last ``context_length`` tokens and
        give the same tokens. (Past the context the window slides, every position
        changes, and the cache is rebuilt at each step: no saving there.)

        ``eos_id``: a sequence that has produced it is finished and is padded with
        ``eos_id``; generation stops early when all are. Returns ``(B, T + new)``. The
        model runs in eval mode (no dropout) and is put back in its mode afterwards.
        """
        fn = "GPT.generate"
        self._check_idx(idx, 0, fn, check_length=False)  # a long prompt is cropped
        integer(max_new_tokens, "max_new_tokens", fn, minimum=0)
        check_sampling(temperature, top_k, top_p, fn)
        limit = self.config.context_length
        was_training = self.training
        self.eval()
        try:
            caches = None
            finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
            for _ in range(max_new_tokens):
                if not use_cache:
                    logits, _ = self(idx[:, -limit:])
                elif caches is None or len(caches[0]) >= limit:  # (re)fill the cache
                    caches = self.new_caches()
                    logits, _ = self(idx[:, -limit:], caches=caches)
                else:  # only the newest token is new
                    logits, _ = self(idx[:, -1:], caches=caches)
                next_id = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
                if eos_id is not None:
                    next_id = next_id.masked_fill(finished, eos_id)
                    finished |= next_id == eos_id
                idx = torch.cat([idx, next_id[:, None]], dim=1)
                if eos_id is not None and bool(finished.all()):
                    break
        finally:
            self.train(was_training)
        return idx


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------

def check_sampling(temperature, top_k, top_p, fn: str) -> None:
    """The sampling settings of :func:`sample_next`, checked where every ``generate`` starts."""
    if not (is_number(temperature) and temperature >= 0):
        raise ValueError(f"{fn}: temperature must be a finite number >= 0 (0 means "
                         f"greedy), got {temperature!r}")
    if top_k is not None and not (is_int(top_k) and top_k >= 1):
        raise ValueError(f"{fn}: top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (is_number(top_p) and 0 < top_p <= 1):
        raise ValueError(f"{fn}: top_p must be None or a number in (0, 1], got {top_p!r}")


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> torch.Tensor:
    """Set to ``-inf`` the logits of the tokens that top-k and top-p rule out.

    * ``top_k``: keep the ``k`` largest logits of each row (exactly ``k``; ties at the
      border are broken by ``torch.topk``).
    * ``top_p`` (nucleus): rank the tokens by probability and keep the *smallest* set of
      top tokens whose total probability is at least ``p``: a token stays if the tokens
      ranked above it hold less than ``p``. The most likely token always stays.

    Applied in that order, top-p on what top-k left. The last dimension is the
    vocabulary.
    """
    check_sampling(1.0, top_k, top_p, "filter_logits")
    vocab = logits.shape[-1]
    if top_k is not None and top_k < vocab:
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_above = probs.cumsum(dim=-1) - probs  # held by the better-ranked tokens
        drop_sorted = mass_above >= top_p
        drop_sorted[..., 0] = False  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0,
                top_k: Optional[int] = None, top_p: Optional[float] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick one token id per row of ``logits`` (..., vocab): returns shape (...,).

    * ``temperature=0`` is **greedy** decoding: the arg-max (the first one on a tie);
      ``top_k`` and ``top_p`` change nothing then, as the best token always survives.
    * otherwise the logits are divided by ``temperature`` (below 1 sharpens, above 1
      flattens the distribution), filtered by :func:`filter_logits` (``top_k``, then
      ``top_p``), turned into probabilities with a softmax and sampled with
      ``torch.multinomial``, drawing from ``generator`` when given (so a seeded
      generator gives the same tokens every time).
    """
    fn = "sample_next"
    tensor(logits, "logits", fn)
    if not logits.is_floating_point():
        raise TypeError(f"{fn}: logits must be floating point, got dtype {logits.dtype}")
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{fn}: logits must have a non-empty last (vocabulary) "
                         f"dimension, got shape {tuple(logits.shape)}")
    check_sampling(temperature, top_k, top_p, fn)
    if torch.isnan(logits).any() or not torch.isfinite(logits).any(-1).all() \
            or (logits == float("inf")).any():
        raise ValueError(f"{fn}: logits must be finite or -inf (a banned token), with at "
                         f"least one finite value per row; got NaN, +inf or a row of -inf")
    if temperature == 0:
        return logits.argmax(dim=-1)
    if logits.dtype in (torch.float16, torch.bfloat16):  # softmax in full precision
        logits = logits.float()
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = logits.softmax(dim=-1).reshape(-1, logits.shape[-1])
    ids = torch.multinomial(probs, 1, generator=generator)
    return ids.reshape(logits.shape[:-1])
