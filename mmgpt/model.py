"""The multimodal GPT: an image encoder, a projector, a fusion strategy and a decoder.

Chapter 08 assembles it from the book's parts::

    images (B, 3, S, S)
      -> image encoder       SmallCNN (Ch. 02) read as a sequence (Ch. 03), or PatchEmbed (Ch. 03)
      -> projector           linear or 2-layer MLP (LLaVA-1.5) into the decoder's width,
                             plus a fixed 2-D sin-cos (or learned) position per image token
      -> image tokens (B, N, dim)
    input_ids (B, T)  -> fusion (mmgpt.fusion: "prefix", "cross" or "late")
                      -> decoder (the GPT of Ch. 07) -> logits (B, T, vocab_size)

**Labels convention.** ``labels`` are *not* shifted: ``labels[b, t]`` is the token the
model should read at position ``t``, or ``-100`` (ignored), exactly the ``labels`` of
``mmgpt.data.Collate``. The model shifts them itself: the logits at position ``t`` are
scored against ``labels[:, t + 1]`` (``logits[:, :-1]`` against ``labels[:, 1:]``), as in
Hugging Face's causal language models. :func:`make_labels` builds them from a batch::

    logits, loss = model(batch["images"], batch["input_ids"],
                         make_labels(batch["input_ids"], batch["loss_mask"]))

(Chapter 07's ``GPT.forward`` takes ``targets`` already shifted; the multimodal model
follows the data pipeline instead, so a batch goes in as it comes out.)

The logits line up with ``input_ids`` for every fusion: prefix fusion reads the image
tokens in place of ``<image>`` and returns the text positions only. Sequences are padded
on the right (``Collate`` does): causal attention never lets a real token see the padding
after it, and the labels ignore it, so no padding mask is needed.

Checkpoints: a checkpoint holds the config as plain values (``model_config``) and the
weights (``model``). :meth:`MultimodalGPT.save` writes them atomically (a temporary file in
the same folder, then ``os.replace``); ``mmgpt.train`` writes the same keys beside the
optimizer's state, so its checkpoint is a superset of the model's file. One reader,
:meth:`MultimodalGPT.from_checkpoint`, builds the model from either, so
:meth:`MultimodalGPT.load` opens either file, with ``torch.load(weights_only=True)`` (no
code runs). A file that is truncated, not a
checkpoint, holds weights that do not fit its config (what
``load_state_dict(strict=True)`` reports), or another config than the one asked for is
refused with a message that names the problem.

Checks that read a tensor's values (token ids in range, a label to predict) run in
``forward`` only on CPU tensors, where they cost nothing; on an accelerator they would
stall every step (see :func:`mmgpt._checks.on_host`), and the batches come from
``Collate``, which builds them right. ``generate`` checks everything: it reads its
tokens back anyway.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ._checks import (boolean, describe, integer, is_int, on_host, one_of, positive_int,
                      probability, tensor)
from .cnn import NORMS, SmallCNN
from .conv import Conv2d
from .fusion import (FUSIONS, CrossAttentionFusion, Fusion, LateFusion,
                     PrefixFusion)
from .loss import IGNORE_INDEX, cross_entropy
from .patches import (LearnedPositionEmbedding, PatchEmbed, feature_map_to_sequence,
                      sincos_position_embedding_2d)
from .transformer import GPT, GPTConfig, check_sampling, sample_next
from .utils import check_pixels, load_weights_only, save_atomic

__all__ = [
    "IGNORE_INDEX",
    "ENCODERS",
    "MultimodalGPTConfig",
    "default_cnn_widths",
    "config_dict",
    "use_torch_convolutions",
    "ImageEncoder",
    "build_fusion",
    "MultimodalGPT",
    "make_labels",
    "prompt_ids",
    "generate_text",
]

ENCODERS = ("cnn", "patch")
PROJECTORS = ("linear", "mlp")
IMAGE_POSITIONS = ("sincos", "learned", "none")
CHECKPOINT_FORMAT = "mmgpt-multimodal-gpt"
# The checkpoints that hold a model (its config in "model_config", its weights in "model"):
# the file of MultimodalGPT.save, and mmgpt.train's checkpoint.pt (which also holds the
# optimizer, the tokenizer, ...).
MODEL_FORMATS = (CHECKPOINT_FORMAT, "mmgpt-train")


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------

def make_labels(input_ids: Tensor, loss_mask: Tensor, ignore_index: int = IGNORE_INDEX
                ) -> Tensor:
    """``input_ids`` where ``loss_mask`` is ``True`` (a token to predict), else ``ignore_index``.

    Not shifted (see the module docstring): the model scores its logits at position ``t``
    against ``labels[:, t + 1]``. Equal to the ``labels`` that ``mmgpt.data.Collate`` puts
    in a batch.
    """
    fn = "make_labels"
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 \
            or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"{fn}: input_ids must be a 2-D integer tensor (B, T), got "
                         f"{describe(input_ids)}")
    if not isinstance(loss_mask, Tensor) or loss_mask.dtype != torch.bool:
        raise TypeError(f"{fn}: loss_mask must be a boolean tensor (True = predict this "
                        f"token), got {describe(loss_mask)}")
    if loss_mask.shape != input_ids.shape:
        raise ValueError(f"{fn}: loss_mask must have input_ids' shape "
                         f"{tuple(input_ids.shape)}, got {tuple(loss_mask.shape)}")
    integer(ignore_index, "ignore_index", fn, error=TypeError)
    return input_ids.long().masked_fill(~loss_mask, ignore_index)


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------

@dataclass
class MultimodalGPTConfig:
    """The shape of a :class:`MultimodalGPT`. The defaults make a ~1M-parameter model
    for 32x32 images that trains on a laptop CPU.

    Text and decoder (Chapter 07):
        vocab_size: the tokenizer's ``vocab_size``.
        image_token_id: the tokenizer's ``image_id``, the ``<image>`` placeholder
            (259 for ``BPETokenizer``). Prefix fusion replaces it by the image tokens.
        context_length: the most text tokens ``input_ids`` may hold (placeholders
            included). Prefix fusion also gives positions to the image tokens.
        dim, num_layers, num_heads, dropout, bias, tie_weights: as in ``GPTConfig``.
        fused: run PyTorch's kernels instead of the book's own code, for speed: attention
            with ``F.scaled_dot_product_attention`` and the CNN's convolutions with
            ``nn.Conv2d`` (same parameters). The results agree up to float rounding
            (Chapters 01, 05 and 06 prove it); ``fused=False`` runs the book's code.

    Image encoder and projector:
        image_size, in_channels: the images, ``(B, in_channels, image_size, image_size)``.
        encoder: ``"cnn"``: the book's :class:`~mmgpt.cnn.SmallCNN` (Chapter 02) with
            ``cnn_widths``, ``cnn_blocks``, ``cnn_pool`` and ``cnn_norm`` (``"batch"`` or
            ``"group"``: per-sample statistics, for DDP), its last feature map read as a
            sequence; ``"patch"``: :class:`~mmgpt.patches.PatchEmbed` (Chapter 03) with
            ``patch_size``, straight from the pixels.
        cnn_widths: ``None`` chooses by ``image_size``: stages of 16, 32, 64, ...
            channels until the map is 4x4 (or smaller): ``(16, 32, 64)`` for 32 pixels,
            ``(16, 32, 64, 128)`` for 64 (``(16, 32, 64)`` with ``cnn_pool="max"``), so
            an image is 16 tokens either way. Without the stem's max pooling
            (``cnn_pool=None``, the default) small shapes keep their detail longer.
        patch_size: ``None`` means ``image_size // 4`` (16 tokens).
        projector: ``"linear"`` or ``"mlp"`` (linear, GELU, linear: LLaVA-1.5's).
        image_pos: position of each image token, added after the projector:
            ``"sincos"`` (fixed 2-D, ``dim`` divisible by 4), ``"learned"`` or ``"none"``.

    Fusion (:mod:`mmgpt.fusion`):
        fusion: ``"prefix"`` (LLaVA), ``"cross"`` (Flamingo) or ``"late"``.
        cross_every: ``"cross"`` puts a gated cross-attention layer before every
            ``cross_every``-th block (1 = before each).

    A value or a combination that cannot work raises ``ValueError`` naming the fields.
    """

    vocab_size: int = 512
    image_token_id: int = 259
    context_length: int = 32
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True
    fused: bool = True
    image_size: int = 32
    in_channels: int = 3
    encoder: str = "cnn"
    cnn_widths: Optional[Tuple[int, ...]] = None
    cnn_blocks: int = 1
    cnn_pool: Optional[str] = None
    cnn_norm: str = "batch"
    patch_size: Optional[int] = None
    projector: str = "mlp"
    image_pos: str = "sincos"
    fusion: str = "prefix"
    cross_every: int = 1

    def __post_init__(self):
        fn = "MultimodalGPTConfig"
        for name in ("vocab_size", "context_length", "dim", "num_layers", "num_heads",
                     "image_size", "in_channels", "cnn_blocks", "cross_every"):
            positive_int(getattr(self, name), name, fn)
        for name, options in (("encoder", ENCODERS), ("projector", PROJECTORS),
                              ("image_pos", IMAGE_POSITIONS), ("fusion", FUSIONS),
                              ("cnn_pool", ("max", "avg", None)), ("cnn_norm", NORMS)):
            one_of(getattr(self, name), name, fn, options)
        for name in ("bias", "tie_weights", "fused"):
            boolean(getattr(self, name), name, fn)
        probability(self.dropout, "dropout", fn)
        if self.dim % self.num_heads:
            raise ValueError(f"{fn}: dim must be divisible by num_heads, got dim={self.dim} "
                             f"and num_heads={self.num_heads}")
        if not (is_int(self.image_token_id) and 0 <= self.image_token_id < self.vocab_size):
            raise ValueError(f"{fn}: image_token_id must be a token id below vocab_size="
                             f"{self.vocab_size}, got image_token_id={self.image_token_id!r} "
                             f"(use the tokenizer's image_id and vocab_size)")
        if self.image_pos == "sincos" and self.dim % 4:
            raise ValueError(f"{fn}: image_pos='sincos' needs dim divisible by 4 (half for "
                             f"rows, half for columns, sin and cos), got dim={self.dim}")
        if self.fusion == "cross" and self.cross_every > self.num_layers:
            raise ValueError(f"{fn}: fusion='cross' with cross_every={self.cross_every} "
                             f"must be at most num_layers={self.num_layers}")
        # None means "chosen by image_size", and stays so: dataclasses.replace(config,
        # image_size=64) hands the chosen value back as a _Derived one, chosen again here.
        if self.cnn_widths is None or isinstance(self.cnn_widths, _DerivedWidths):
            self.cnn_widths = _DerivedWidths(default_cnn_widths(self.image_size, self.cnn_pool))
        if isinstance(self.cnn_widths, list):
            self.cnn_widths = tuple(self.cnn_widths)
        if not (isinstance(self.cnn_widths, tuple) and self.cnn_widths
                and all(is_int(w) and w > 0 for w in self.cnn_widths)):
            raise ValueError(f"{fn}: cnn_widths must be None or a non-empty tuple of "
                             f"positive ints, got {self.cnn_widths!r}")
        if self.patch_size is None or isinstance(self.patch_size, _DerivedSize):
            self.patch_size = _DerivedSize(max(1, self.image_size // 4))  # 16 tokens
        positive_int(self.patch_size, "patch_size", fn)
        if self.encoder == "patch" and self.image_size % self.patch_size:
            raise ValueError(f"{fn}: encoder='patch' needs image_size divisible by "
                             f"patch_size, got image_size={self.image_size} and patch_size="
                             f"{self.patch_size}")

    @classmethod
    def for_tokenizer(cls, tokenizer, **overrides) -> "MultimodalGPTConfig":
        """A config whose ``vocab_size`` and ``image_token_id`` are the tokenizer's."""
        return cls(vocab_size=tokenizer.vocab_size, image_token_id=tokenizer.image_id,
                   **overrides)

    @property
    def image_grid(self) -> Tuple[int, int]:
        """``(rows, columns)`` of image tokens the encoder makes."""
        if self.encoder == "patch":
            side = self.image_size // self.patch_size
            return side, side
        probe = SmallCNN(self.in_channels, (1,) * len(self.cnn_widths), 1, self.cnn_pool)
        shape = probe.output_shape((self.in_channels, self.image_size, self.image_size))
        return shape[-2], shape[-1]

    @property
    def num_image_tokens(self) -> int:
        rows, cols = self.image_grid
        return rows * cols


class _DerivedWidths(tuple):
    """``cnn_widths`` that the config chose itself (the field was ``None``). It equals the
    plain tuple; it only tells ``__post_init__`` to choose again when a copy of the config
    (``dataclasses.replace``) changes what it was chosen from."""


class _DerivedSize(int):
    """``patch_size`` that the config chose itself (see :class:`_DerivedWidths`)."""


def default_cnn_widths(image_size: int, cnn_pool: Optional[str] = None) -> Tuple[int, ...]:
    """16 channels, doubled by every stage until the feature map is 4x4 or smaller."""
    size = -(-image_size // 2)  # the stem halves (rounding up)
    if cnn_pool is not None:
        size = -(-size // 2)
    widths = [16]
    while size > 4:  # each later stage halves the map again
        widths.append(2 * widths[-1])
        size = -(-size // 2)
    return tuple(widths)


def config_dict(config) -> dict:
    """A config dataclass as plain values (lists, ints, strings): what a checkpoint stores."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


# --------------------------------------------------------------------------------------
# Image encoder
# --------------------------------------------------------------------------------------

def use_torch_convolutions(module: nn.Module) -> nn.Module:
    """Replace every :class:`mmgpt.conv.Conv2d` inside ``module`` by an ``nn.Conv2d`` with
    the same arguments and weights, in place; returns ``module``.

    The two compute the same convolution (Chapter 01 proves it) and have the same
    parameters and state-dict keys, so checkpoints load either way; PyTorch's kernel is
    several times faster, above all in the backward pass. ``fused=True`` does this.
    """
    for name, child in module.named_children():
        if isinstance(child, Conv2d):
            torch_conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                   child.stride, child.padding, child.dilation, child.groups,
                                   child.bias is not None, child.padding_mode,
                                   device=child.weight.device, dtype=child.weight.dtype)
            torch_conv.load_state_dict(child.state_dict())
            setattr(module, name, torch_conv)
        else:
            use_torch_convolutions(child)
    return module


class ImageEncoder(nn.Module):
    """Images ``(B, C, S, S)`` -> image tokens ``(B, N, dim)`` in the decoder's width.

    ``backbone`` (a :class:`~mmgpt.cnn.SmallCNN` whose feature map is read as a sequence
    in row-major order, or a :class:`~mmgpt.patches.PatchEmbed`), then ``projector``
    (linear or MLP) and a position per token (2-D sin-cos, learned, or none).
    """

    def __init__(self, config: MultimodalGPTConfig):
        super().__init__()
        c = config
        self.image_size, self.in_channels = c.image_size, c.in_channels
        self.grid = c.image_grid
        self.num_tokens = self.grid[0] * self.grid[1]
        if c.encoder == "cnn":
            self.backbone = SmallCNN(c.in_channels, c.cnn_widths, c.cnn_blocks, c.cnn_pool,
                                     c.cnn_norm)
            if c.fused:
                use_torch_convolutions(self.backbone)
            features = c.cnn_widths[-1]
        else:
            self.backbone = PatchEmbed(c.image_size, c.patch_size, c.in_channels, c.dim)
            features = c.dim
        if c.projector == "linear":
            self.projector = nn.Linear(features, c.dim)
        else:
            self.projector = nn.Sequential(nn.Linear(features, c.dim), nn.GELU(),
                                           nn.Linear(c.dim, c.dim))
        self.position = None
        if c.image_pos == "learned":
            self.position = LearnedPositionEmbedding(self.num_tokens, c.dim)
        elif c.image_pos == "sincos":  # fixed: a buffer, not saved in checkpoints
            self.register_buffer("sincos", sincos_position_embedding_2d(*self.grid, c.dim),
                                 persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = self.backbone(images)
        if x.dim() == 4:  # a CNN feature map (B, C, h, w) -> (B, h*w, C)
            x = feature_map_to_sequence(x)
        x = self.projector(x)
        if self.position is not None:
            x = self.position(x)
        elif hasattr(self, "sincos"):
            x = x + self.sincos
        return x


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------

def build_fusion(config: MultimodalGPTConfig) -> Fusion:
    """The fusion module ``config.fusion`` names."""
    c = config
    if c.fusion == "prefix":
        return PrefixFusion(c.image_token_id)
    if c.fusion == "cross":
        return CrossAttentionFusion(c.dim, c.num_heads, c.num_layers, c.cross_every,
                                    c.dropout, c.bias, c.fused)
    return LateFusion()


class MultimodalGPT(nn.Module):
    """A GPT that reads an image: ``model(images, input_ids, labels) -> (logits, loss)``.

    ``encoder`` (:class:`ImageEncoder`) makes ``N`` image tokens, ``fusion`` lets the
    ``decoder`` (a :class:`~mmgpt.transformer.GPT`, whose embeddings, blocks, final layer
    norm and tied head are used) read them with the text. See the module docstring for
    the labels convention.
    """

    def __init__(self, config: MultimodalGPTConfig):
        super().__init__()
        if not isinstance(config, MultimodalGPTConfig):
            raise TypeError(f"MultimodalGPT: config must be a MultimodalGPTConfig, got "
                            f"{type(config).__name__}")
        self.config = c = config
        self.encoder = ImageEncoder(c)
        self.fusion = build_fusion(c)
        positions = self.fusion.num_positions(c.context_length, self.encoder.num_tokens)
        self.decoder = GPT(GPTConfig(c.vocab_size, positions, c.dim, c.num_layers,
                                     c.num_heads, c.dropout, c.tie_weights, c.bias, c.fused))

    @property
    def num_image_tokens(self) -> int:
        return self.encoder.num_tokens

    def num_parameters(self) -> int:
        """Number of parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def parameter_counts(self) -> Dict[str, int]:
        """Parameters per part: image encoder, projector (with learned positions), fusion
        (cross-attention layers) and decoder (embeddings, blocks, head)."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        encoder = count(self.encoder.backbone)
        return {"image encoder": encoder,
                "projector": count(self.encoder) - encoder,
                "fusion": count(self.fusion),
                "decoder": count(self.decoder)}

    # -- checks -----------------------------------------------------------------------

    def _check_images(self, images, fn: str) -> None:
        c = self.config
        expected = f"(B, {c.in_channels}, {c.image_size}, {c.image_size})"
        tensor(images, f"images {expected}", fn)
        if not images.is_floating_point():
            raise TypeError(f"{fn}: images must be floating point (pixels in [0, 1]), got "
                            f"{images.dtype}")
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"{fn}: images must be 4-D {expected} with at least one image, "
                             f"got shape {tuple(images.shape)}")
        weight_dtype = next(self.encoder.parameters()).dtype
        if images.dtype != weight_dtype:
            raise TypeError(f"{fn}: images are {images.dtype} but the model's weights are "
                            f"{weight_dtype}; pass {weight_dtype} images (for 16-bit training, "
                            f"torch.autocast picks 16-bit kernels itself)")
        if images.shape[1] != c.in_channels:
            raise ValueError(f"{fn}: images must have in_channels={c.in_channels} channels "
                             f"(dimension 1), got shape {tuple(images.shape)}")
        if tuple(images.shape[2:]) != (c.image_size, c.image_size):
            raise ValueError(f"{fn}: images must be {c.image_size}x{c.image_size} "
                             f"(image_size={c.image_size}), got "
                             f"{images.shape[2]}x{images.shape[3]}; resize them or build "
                             f"the model with another image_size")

    def _check_ids(self, input_ids, batch: int, fn: str, name: str = "input_ids") -> None:
        """The shape and dtype of token ids: no values read."""
        c = self.config
        tensor(input_ids, name, fn)
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{fn}: {name} must hold integer token ids (int64), got "
                            f"{input_ids.dtype}")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"{fn}: {name} must be 2-D (batch, time) with at least one "
                             f"token, got shape {tuple(input_ids.shape)}")
        if input_ids.shape[0] != batch:
            raise ValueError(f"{fn}: {name} has batch size {input_ids.shape[0]} but "
                             f"images has {batch}")
        if input_ids.shape[1] > c.context_length:
            raise ValueError(f"{fn}: {name} has {input_ids.shape[1]} tokens, more than the "
                             f"model's context_length={c.context_length}")

    def _check_id_values(self, input_ids: Tensor, fn: str, name: str = "input_ids") -> None:
        """Token ids in ``[0, vocab_size)``: reads the values (a device sync off the CPU)."""
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(f"{fn}: {name} must lie in [0, vocab_size="
                             f"{self.config.vocab_size}), got values from {low} to {high}")

    # -- forward ----------------------------------------------------------------------

    def encode_images(self, images: Tensor) -> Tensor:
        """Image tokens ``(B, N, dim)``, in the decoder's width."""
        self._check_images(images, "MultimodalGPT.encode_images")
        return self.encoder(images)

    def forward(self, images: Tensor, input_ids: Tensor, labels: Optional[Tensor] = None
                ) -> Tuple[Tensor, Optional[Tensor]]:
        """Logits ``(B, T, vocab_size)`` for ``input_ids`` ``(B, T)`` about ``images``, and,
        given ``labels`` (not shifted, ``-100`` = ignore; see :func:`make_labels`), the
        mean cross-entropy of ``logits[:, :-1]`` against ``labels[:, 1:]`` (else ``None``).
        """
        fn = "MultimodalGPT.forward"
        self._check_images(images, fn)
        self._check_ids(input_ids, images.shape[0], fn)
        if on_host(input_ids):  # reading values on an accelerator would stall every step
            self._check_id_values(input_ids, fn)
        if labels is not None:
            self._check_labels(labels, input_ids, fn)
        hidden = self.fusion(self.decoder, self.encoder(images), input_ids)
        logits = self.decoder.logits(hidden)
        if labels is None:
            return logits, None
        loss = cross_entropy(logits[:, :-1], labels[:, 1:], ignore_index=IGNORE_INDEX)
        return logits, loss  # position t predicts token t + 1

    def _check_labels(self, labels, input_ids: Tensor, fn: str) -> None:
        if not isinstance(labels, Tensor) or labels.shape != input_ids.shape:
            raise ValueError(f"{fn}: labels must have input_ids' shape "
                             f"{tuple(input_ids.shape)} (not shifted; -100 = ignore), "
                             f"got {describe(labels)}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"{fn}: labels must hold integer token ids, got {labels.dtype}")
        if on_host(labels) and not bool((labels[:, 1:] != IGNORE_INDEX).any()):
            raise ValueError(f"{fn}: labels has no token to predict (every label after "  # a
                             f"the first is {IGNORE_INDEX})")  # mean of nothing is NaN

    # -- generation -------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, images: Tensor, prompt_ids: Tensor, max_new_tokens: int, *,
                 temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, use_cache: bool = True,
                 eos_id: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """Continue ``prompt_ids`` (B, T) about ``images`` by up to ``max_new_tokens`` tokens.

        The prompt must hold the ``<image>`` placeholder for prefix fusion, and its rows
        must all be real tokens (no padding): batch prompts of one length, or one at a time.
        Each step picks a token with :func:`~mmgpt.transformer.sample_next`
        (``temperature=0`` is greedy; ``top_k``, ``top_p``, ``generator`` as there); the
        ``<image>`` placeholder is never chosen. The image is encoded once. With
        ``use_cache`` the prompt (and the image) is read once and each later step feeds
        only the newest token; without, every step recomputes everything; both give the
        same tokens. ``eos_id``: a finished row is padded with it, and generation stops
        when all rows are finished. ``T + max_new_tokens`` must fit in
        ``context_length`` (the image cannot slide out of a window). Returns
        ``(B, T + new)``; the model runs in eval mode and is put back in its mode.
        """
        fn = "MultimodalGPT.generate"
        self._check_images(images, fn)
        self._check_ids(prompt_ids, images.shape[0], fn, "prompt_ids")
        self._check_id_values(prompt_ids, fn, "prompt_ids")  # once per call
        integer(max_new_tokens, "max_new_tokens", fn, minimum=0)
        limit = self.config.context_length
        if prompt_ids.shape[1] + max_new_tokens > limit:
            raise ValueError(f"{fn}: a prompt of {prompt_ids.shape[1]} tokens plus "
                             f"max_new_tokens={max_new_tokens} is more than the model's "
                             f"context_length={limit}")
        check_sampling(temperature, top_k, top_p, fn)
        if eos_id is not None and not (is_int(eos_id) and 0 <= eos_id < self.config.vocab_size):
            raise ValueError(f"{fn}: eos_id must be None or a token id below vocab_size="
                             f"{self.config.vocab_size}, got {eos_id!r}")
        check_pixels(images, fn)  # once per call, not per generated token
        was_training = self.training
        self.eval()
        try:
            image_tokens = self.encoder(images)
            cache = self.fusion.new_cache(self.decoder) if use_cache else None
            ids = prompt_ids.long()
            finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
            for step in range(max_new_tokens):
                new = ids if (cache is None or step == 0) else ids[:, -1:]
                hidden = self.fusion(self.decoder, image_tokens, new, cache)
                logits = self.decoder.logits(hidden[:, -1])
                logits[:, self.config.image_token_id] = float("-inf")  # never an <image>
                next_id = sample_next(logits, temperature, top_k, top_p, generator)
                if eos_id is not None:
                    next_id = next_id.masked_fill(finished, eos_id)
                    finished |= next_id == eos_id
                ids = torch.cat([ids, next_id[:, None]], dim=1)
                if eos_id is not None and bool(finished.all()):
                    break
        finally:
            self.train(was_training)
        return ids

    # -- checkpoints ------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, config: Optional[MultimodalGPTConfig] = None,
                        *, where: str = "the checkpoint",
                        fn: str = "MultimodalGPT.from_checkpoint") -> "MultimodalGPT":
        """The model a checkpoint dict holds: one written by :meth:`save`, or a training
        checkpoint of ``mmgpt.train``. ``config``, if given, is the config the caller
        expects: a checkpoint with another one is refused with the fields that differ.
        Weights that do not fit the stored config (what ``load_state_dict(strict=True)``
        finds: a missing or unexpected key, a wrong shape) raise ``ValueError`` naming
        ``where``."""
        kind = checkpoint.get("format") if isinstance(checkpoint, dict) else None
        if kind not in MODEL_FORMATS:
            raise ValueError(f"{fn}: {where} is not a MultimodalGPT checkpoint (no format "
                             f"in {list(MODEL_FORMATS)}; was it written by MultimodalGPT.save "
                             f"or mmgpt.train?)")
        if kind == CHECKPOINT_FORMAT and checkpoint.get("version") == 1:  # save's first files
            checkpoint = {"model_config": checkpoint.get("config"),
                          "model": checkpoint.get("state_dict")}
        stored = checkpoint.get("model_config")
        fields = {f.name for f in dataclasses.fields(MultimodalGPTConfig)}
        if not isinstance(stored, dict) or set(stored) != fields:
            unknown = sorted(set(stored or {}) - fields)
            missing = sorted(fields - set(stored or {}))
            raise ValueError(f"{fn}: {where} holds a config this mmgpt cannot read "
                             f"(unknown fields {unknown}, missing fields {missing})")
        stored = MultimodalGPTConfig(**stored)
        if config is not None:
            if not isinstance(config, MultimodalGPTConfig):
                raise TypeError(f"{fn}: config must be a MultimodalGPTConfig or None, got "
                                f"{type(config).__name__}")
            diff = [f"{name}: checkpoint {getattr(stored, name)!r}, expected "
                    f"{getattr(config, name)!r}"
                    for name in sorted(fields) if getattr(stored, name) != getattr(config, name)]
            if diff:
                raise ValueError(f"{fn}: {where} does not fit the config asked for; it "
                                 f"differs in " + "; ".join(diff))
        model = cls(stored)
        try:
            model.load_state_dict(checkpoint.get("model"))  # strict: every key and shape
        except (RuntimeError, TypeError) as err:  # its message: one problem per line
            problems = "; ".join(line.strip() for line in str(err).splitlines()[1:])
            raise ValueError(f"{fn}: the weights in {where} do not fit its config: "
                             f"{problems or err}") from None
        return model

    def save(self, path) -> None:
        """Write the config and the weights to ``path`` atomically.

        The file is first written in full to a temporary file in the same folder and
        then renamed over ``path`` (``os.replace``), so ``path`` always holds either the
        old checkpoint or the new one, never half of one. The keys are the ones a training
        checkpoint keeps the model under (``model_config``, ``model``); version 1 of this
        file called them ``config`` and ``state_dict``, and still loads.
        """
        save_atomic({"format": CHECKPOINT_FORMAT, "version": 2,
                     "model_config": config_dict(self.config), "model": self.state_dict()},
                    path)

    @classmethod
    def load(cls, path, config: Optional[MultimodalGPTConfig] = None,
             map_location="cpu") -> "MultimodalGPT":
        """The model saved at ``path`` by :meth:`save`, or by ``mmgpt.train`` (its
        ``checkpoint.pt``), read with ``torch.load(weights_only=True)``: only tensors and
        plain values, no code. ``config`` and the errors: as :meth:`from_checkpoint`; a
        truncated or foreign file raises ``ValueError`` too."""
        fn = "MultimodalGPT.load"
        checkpoint = load_weights_only(path, fn, map_location)
        return cls.from_checkpoint(checkpoint, config, where=os.fspath(path), fn=fn)

    def extra_repr(self) -> str:
        c = self.config
        return (f"fusion={c.fusion!r}, encoder={c.encoder!r}, image_tokens="
                f"{self.num_image_tokens}, params={self.num_parameters():,}")


# --------------------------------------------------------------------------------------
# Text in, text out
# --------------------------------------------------------------------------------------

def prompt_ids(tokenizer, question: Optional[str] = None) -> list:
    """The prompt the book's data trains on: ``<bos> <image> question <sep>`` asks for the
    answer, ``<bos> <image> <sep>`` (no question) for a caption; what ``Collate`` builds
    before the target."""
    words = tokenizer.encode(question) if question else []
    return [tokenizer.bos_id, tokenizer.image_id] + words + [tokenizer.sep_id]


def generate_text(model: MultimodalGPT, tokenizer, image: Tensor,
                  question: Optional[str] = None, *, max_new_tokens: Optional[int] = None,
                  temperature: float = 0.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None,
                  generator: Optional[torch.Generator] = None) -> str:
    """The model's answer to ``question`` about ``image`` (a ``(C, H, W)`` tensor), or its
    caption when there is no question, as text up to ``<eos>``. Greedy by default
    (``temperature=0``); ``max_new_tokens`` defaults to what the context leaves."""
    tensor(image, "image", "generate_text", ndim=(3,), layout="one (C, H, W) tensor")
    prompt = torch.tensor([prompt_ids(tokenizer, question)], device=image.device)
    if max_new_tokens is None:
        max_new_tokens = model.config.context_length - prompt.shape[1]
    out = model.generate(image[None], prompt, max_new_tokens, temperature=temperature,
                         top_k=top_k, top_p=top_p, eos_id=tokenizer.eos_id,
                         generator=generator)
    new = out[0, prompt.shape[1]:].tolist()
    if tokenizer.eos_id in new:
        new = new[:new.index(tokenizer.eos_id)]
    return tokenizer.decode(new, skip_special=True)
