"""Cross-modal fusion: three ways for a text decoder to read an image's tokens.

Chapter 08 compares them. Each strategy takes the decoder of Chapter 07 (a
:class:`~mmgpt.transformer.GPT`, whose stages it calls: ``decoder.embed``,
``decoder.run_blocks``), the image tokens ``(B, N, dim)`` an image encoder made, and the
text ids ``(B, T)``; it returns the decoder's residual stream at the ``T`` text positions,
``(B, T, dim)``, ready for ``decoder.logits`` (the final layer norm and the head). So the
logits line up with the text ids whatever the strategy, and one labels convention serves
all three.

* :class:`PrefixFusion` (early fusion, LLaVA): the image tokens take the place of the
  ``<image>`` placeholder in the text, forming **one sequence** that the decoder's own
  self-attention reads. Its mask, :func:`prefix_attention_mask`, has three kinds of
  allowed blocks: image -> image in both directions, text -> image, and text -> text
  causally. Image tokens never see the text that follows them.
* :class:`CrossAttentionFusion` (Flamingo): the text stays alone in the decoder, and extra
  :class:`GatedCrossAttention` layers between the blocks let text tokens look up the image
  tokens. Each is gated by ``tanh(gate)`` with ``gate = 0`` at initialisation, so a fresh
  model computes *exactly* the text-only decoder, and training opens the gates.
* :class:`LateFusion`: the image is pooled into **one vector**, added to the text stream
  after the last block. The text never attends to the image; only the output head sees
  both. A weak baseline, kept to show why token-level fusion matters.

All three support the KV cache (:class:`FusionCache`): feeding a sequence at once, or its
prompt and then one token at a time, gives the same outputs.

The placeholder checks read the ids' values, so they run on CPU tensors only
(:func:`~mmgpt._checks.on_host`): on an accelerator they would stall every step, and the
ids come from ``Collate``, which writes the placeholders right.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ._checks import on_host
from .attention import KVCache, MultiHeadAttention, causal_mask
from .transformer import GPT, MLP, LayerNorm, init_weights

__all__ = [
    "FUSIONS",
    "prefix_attention_mask",
    "splice_image_tokens",
    "FusionCache",
    "Fusion",
    "PrefixFusion",
    "GatedCrossAttention",
    "CrossAttentionFusion",
    "LateFusion",
]

FUSIONS = ("prefix", "cross", "late")


# --------------------------------------------------------------------------------------
# Prefix fusion: one sequence, one mask
# --------------------------------------------------------------------------------------

def prefix_attention_mask(is_image: Tensor) -> Tensor:
    """The attention mask of a sequence of image and text tokens: ``True`` = may attend.

    ``is_image`` is a boolean ``(B, L)`` (or ``(L,)``) tensor, ``True`` at image tokens.
    Query ``i`` may attend to key ``j`` when ``j <= i`` (causal) **or** both are image
    tokens. So the mask is made of the seed article's three kinds of attention:

    * image -> image: the image tokens see each other in both directions (an image has no
      reading order);
    * text -> image: a text token after the image sees all of it;
    * text -> text: causal, as in any language model.

    Image tokens never see the text after them. With the image first, this is
    :func:`~mmgpt.attention.prefix_causal_mask`. Returns ``(B, L, L)`` (or ``(L, L)``).
    """
    fn = "prefix_attention_mask"
    if not isinstance(is_image, Tensor) or is_image.dtype != torch.bool \
            or is_image.dim() not in (1, 2):
        raise TypeError(f"{fn}: is_image must be a boolean tensor of shape (B, L) or (L,), "
                        f"got {getattr(is_image, 'dtype', type(is_image).__name__)} of shape "
                        f"{tuple(getattr(is_image, 'shape', ()))}")
    L = is_image.shape[-1]
    causal = causal_mask(L, device=is_image.device)
    return causal | (is_image[..., :, None] & is_image[..., None, :])


def splice_image_tokens(text: Tensor, image: Tensor, placeholder: Tensor
                        ) -> Tuple[Tensor, Tensor, Tensor]:
    """Put the ``N`` image tokens where the placeholder stands in each row of ``text``.

    ``text`` is ``(B, T, D)`` (embedded text tokens), ``image`` is ``(B, N, D)`` and
    ``placeholder`` a boolean ``(B, T)``, ``True`` at the ``<image>`` tokens. Every row
    holds either

    * **one** placeholder, at position ``p_b``: it is *replaced* by the ``N`` image tokens,
      and row ``b`` becomes ``text[:p_b] + image + text[p_b+1:]``, of length
      ``L = T + N - 1`` (LLaVA's way); or
    * ``N`` placeholders **in a row**: the image tokens are written over them, in order,
      and ``L = T`` (what ``Collate(..., image_tokens=N)`` produces).

    Returns ``(x, is_image, text_index)``: the ``(B, L, D)`` sequence, the boolean
    ``(B, L)`` that marks its image tokens, and ``(B, T)`` indices saying where each text
    position's *output* is read: text token ``t`` moved to ``t`` or ``t + N - 1``, and a
    single placeholder's output is that of the **last image token** (the position that
    predicts the token after the image), so outputs line up with the text ids.
    """
    B, T, D = text.shape
    N = image.shape[1]
    # How many placeholders decides the length L: the one value read back from the device.
    count = int(placeholder[0].sum()) if B else 1
    p = placeholder.long().argmax(dim=1)[:, None]  # (B, 1): where each row's image starts
    shift = N - count  # how much later the text after the image moves
    j = torch.arange(T + shift, device=text.device)[None]  # (1, L): positions of the result
    is_image = (j >= p) & (j < p + N)
    if on_host(placeholder):
        _check_layout(placeholder, is_image, N)
    text_src = torch.where(j < p, j, j - shift).clamp(0, T - 1)  # (B, L)
    image_src = (j - p).clamp(0, N - 1)
    x = torch.where(is_image[..., None],
                    image.gather(1, image_src[..., None].expand(B, -1, D)),
                    text.gather(1, text_src[..., None].expand(B, -1, D)))
    t = torch.arange(T, device=text.device)[None]
    text_index = torch.where(t < p, t, t + shift)  # one placeholder -> the last image token
    return x, is_image, text_index.expand(B, T)


def _check_layout(placeholder: Tensor, is_image: Tensor, N: int) -> None:
    counts = placeholder.sum(dim=1).tolist()
    bad = [b for b, n in enumerate(counts) if n != counts[0] or n not in (1, N)]
    if bad:
        raise ValueError(f"splice_image_tokens: every row must hold the <image> placeholder "
                         f"once or N={N} times in a row, all rows alike; row {bad[0]} holds "
                         f"it {counts[bad[0]]} times (start each sequence with <bos> <image>, "
                         f"as Collate does)")
    if counts[0] == N and not torch.equal(is_image, placeholder):
        raise ValueError(f"splice_image_tokens: the {N} <image> placeholders of a row must "
                         f"stand next to each other")


# --------------------------------------------------------------------------------------
# The common interface
# --------------------------------------------------------------------------------------

@dataclass
class FusionCache:
    """What a fusion remembers between calls while generating.

    ``self_attn`` holds one :class:`~mmgpt.attention.KVCache` per decoder block;
    ``cross_attn`` one per cross-attention layer (their keys and values are the projected
    image tokens, computed once). ``len(cache)`` is the number of positions the decoder
    has seen, image tokens included for prefix fusion.
    """

    self_attn: List[KVCache]
    cross_attn: List[KVCache] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.self_attn[0]) if self.self_attn else 0


class Fusion(nn.Module):
    """The interface of a fusion strategy (subclasses implement :meth:`forward`).

    ``forward(decoder, image_tokens, input_ids, cache=None)`` returns the residual stream
    ``(B, T, dim)`` at the text positions (before the decoder's final layer norm).
    ``num_positions`` says how many positions the decoder's position table needs.
    """

    name = "fusion"

    def num_positions(self, context_length: int, num_image_tokens: int) -> int:
        """Positions the decoder reads for ``context_length`` text tokens: the text only."""
        return context_length

    def new_cache(self, decoder: GPT) -> FusionCache:
        """An empty cache for generation."""
        return FusionCache(decoder.new_caches())

    def forward(self, decoder: GPT, image_tokens: Tensor, input_ids: Tensor,
                cache: Optional[FusionCache] = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class PrefixFusion(Fusion):
    """Early fusion (LLaVA): the image tokens take the place of the ``<image>`` placeholder.

    Every row of ``input_ids`` must hold the placeholder ``image_token_id``, once (e.g.
    ``<bos> <image> what colour is the square? <sep>``, as ``Collate`` writes by default)
    or ``N`` times in a row (``Collate(..., image_tokens=N)``); :func:`splice_image_tokens`
    puts the ``N`` image tokens there, and the decoder reads the spliced sequence with
    :func:`prefix_attention_mask`. Positions count the image tokens, so the decoder's
    position table needs ``context_length + N - 1`` rows. The output at a single
    placeholder is that of the last image token, which predicts the first token after it.

    With a cache, a first call reads the prompt (with its placeholder) and later calls
    read new text tokens only, which must not hold the placeholder.
    """

    name = "prefix"

    def __init__(self, image_token_id: int):
        super().__init__()
        self.image_token_id = image_token_id

    def extra_repr(self) -> str:
        return f"image_token_id={self.image_token_id}"

    def num_positions(self, context_length: int, num_image_tokens: int) -> int:
        return context_length + num_image_tokens - 1

    def forward(self, decoder: GPT, image_tokens: Tensor, input_ids: Tensor,
                cache: Optional[FusionCache] = None) -> Tensor:
        caches = None if cache is None else cache.self_attn
        placeholder = input_ids == self.image_token_id
        if cache is not None and len(cache):  # after the cached prompt: text only, causal
            if on_host(placeholder):
                self._check_no_placeholder(placeholder)
            return decoder.run_blocks(decoder.embed(input_ids, len(cache)), caches=caches)
        text = decoder.tok_emb(input_ids)
        x, is_image, text_index = splice_image_tokens(text, image_tokens, placeholder)
        mask = prefix_attention_mask(is_image)[:, None]  # (B, 1, L, L): every head
        x = decoder.run_blocks(decoder.add_positions(x), mask, caches)
        return x.gather(1, text_index[..., None].expand(-1, -1, x.shape[-1]))  # text positions

    def _check_no_placeholder(self, placeholder: Tensor) -> None:
        if bool(placeholder.any()):
            raise ValueError(f"PrefixFusion: the image was already read into the cache; new "
                             f"tokens must not hold the <image> placeholder "
                             f"(id {self.image_token_id})")


# --------------------------------------------------------------------------------------
# Cross-attention fusion
# --------------------------------------------------------------------------------------

class GatedCrossAttention(nn.Module):
    """Flamingo's gated cross-attention dense layer, in pre-norm form::

        x = x + tanh(attn_gate) * cross_attn(ln_1(x), image_tokens)
        x = x + tanh(mlp_gate)  * mlp(ln_2(x))

    Both gates are scalars that start at 0: ``tanh(0) = 0``, so a new layer adds exactly
    nothing and the decoder around it behaves as before. The gates' gradients are not
    zero, so training opens them (and then the other weights learn).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 fused: bool = False):
        super().__init__()
        self.ln_1 = LayerNorm(dim, bias=bias)
        self.attn = MultiHeadAttention(dim, num_heads, dropout=dropout, bias=bias,
                                       fused=fused)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ln_2 = LayerNorm(dim, bias=bias)
        self.mlp = MLP(dim, dropout=dropout, bias=bias)
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, image_tokens: Optional[Tensor],
                cache: Optional[KVCache] = None) -> Tensor:
        """``x`` (B, T, dim) attends to ``image_tokens`` (B, N, dim): every text token to
        every image token (no mask: the image is given before any text). With a cache
        the image's keys and values are projected once."""
        a = self.attn(self.ln_1(x), image_tokens, cache=cache)
        x = x + torch.tanh(self.attn_gate) * a
        return x + torch.tanh(self.mlp_gate) * self.mlp(self.ln_2(x))


class CrossAttentionFusion(Fusion):
    """Flamingo-style fusion: a :class:`GatedCrossAttention` before every ``every``-th block.

    The text runs through the decoder on its own (causal self-attention, positions
    ``0..T-1``, the ``<image>`` token, if any, is an ordinary token); before blocks
    ``0, every, 2*every, ...`` the text tokens look up the image tokens. At
    initialisation all gates are closed and the model computes the text-only decoder.
    """

    name = "cross"

    def __init__(self, dim: int, num_heads: int, num_layers: int, every: int = 1,
                 dropout: float = 0.0, bias: bool = True, fused: bool = False):
        super().__init__()
        self.every = every
        self.where = tuple(range(0, num_layers, every))  # blocks preceded by a layer
        self.layers = nn.ModuleList(
            GatedCrossAttention(dim, num_heads, dropout, bias, fused) for _ in self.where)
        for layer in self.layers:  # GPT's initialisation (the gates stay at 0)
            layer.apply(init_weights)

    def extra_repr(self) -> str:
        return f"before_blocks={self.where}"

    def new_cache(self, decoder: GPT) -> FusionCache:
        return FusionCache(decoder.new_caches(), [KVCache() for _ in self.layers])

    def gates(self) -> Tensor:
        """``tanh`` of every gate, ``(layers, 2)``: attention and MLP, 0 = closed."""
        return torch.stack([torch.tanh(torch.cat([layer.attn_gate, layer.mlp_gate]))
                            for layer in self.layers])

    def forward(self, decoder: GPT, image_tokens: Tensor, input_ids: Tensor,
                cache: Optional[FusionCache] = None) -> Tensor:
        x = decoder.embed(input_ids, past=0 if cache is None else len(cache))
        for k, layer in enumerate(self.layers):  # a cross-attention layer, then `every` blocks
            x = layer(x, image_tokens, cache=None if cache is None else cache.cross_attn[k])
            x = decoder.run_blocks(x, caches=None if cache is None else cache.self_attn,
                                   start=k * self.every, stop=(k + 1) * self.every)
        return x


# --------------------------------------------------------------------------------------
# Late fusion
# --------------------------------------------------------------------------------------

class LateFusion(Fusion):
    """One pooled image vector added to the text stream after the last block.

    The decoder reads the text alone; the mean of the image tokens, ``(B, 1, dim)``, is
    added to every text position's output just before the final layer norm and the head.
    No text token ever attends to an image token, so a question such as "what colour is
    the square?" can only be answered by what a layer norm and one linear layer make of
    ``question + image``: the weak baseline.
    """

    name = "late"

    def forward(self, decoder: GPT, image_tokens: Tensor, input_ids: Tensor,
                cache: Optional[FusionCache] = None) -> Tensor:
        x = decoder.embed(input_ids, past=0 if cache is None else len(cache))
        x = decoder.run_blocks(x, caches=None if cache is None else cache.self_attn)
        return x + image_tokens.mean(dim=1, keepdim=True)
