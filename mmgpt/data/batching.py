"""From samples to a batch: token sequences with the image slot, padding and masks.

Every sample becomes one sequence of token ids in the layout the multimodal model reads::

    question:  <bos> <image> what shape is the red object ? <sep> square <eos>
    caption:   <bos> <image> <sep> a red circle and a blue square <eos>

``<image>`` marks where the image goes (the model puts the image's vectors there;
``image_tokens=k`` writes ``k`` of them). Everything up to and including ``<sep>`` is the
*prompt*, the model's input when it answers; what follows is what it must *predict*.
Sequences are padded on the right with ``<pad>`` to the longest in the batch.

The batch is a dict of tensors (B = batch size, T = longest sequence):

* ``images`` ``(B, 3, H, W)``: the images, stacked (all must have one size);
* ``input_ids`` ``(B, T)`` long: the tokens;
* ``attention_mask`` ``(B, T)`` bool: ``True`` on real tokens, ``False`` on padding;
* ``loss_mask`` ``(B, T)`` bool: ``True`` on the tokens to predict: the answer (or caption)
  and the ``<eos>`` after it, never on the prompt or padding;
* ``labels`` ``(B, T)`` long: ``input_ids`` where ``loss_mask``, else ``IGNORE_INDEX`` (-100,
  from :mod:`mmgpt.loss`: the ``ignore_index`` of ``cross_entropy``). Like ``input_ids`` they are *not* shifted: the
  model predicts token ``t`` from the tokens before it, so the loss compares
  ``logits[:, :-1]`` with ``labels[:, 1:]``;
* ``prompt_lengths`` and ``lengths`` ``(B,)`` long: prompt and full lengths;
* ``question``, ``answer``, ``caption``, ``family``: lists of the samples' texts
  (``None`` where a sample has none), for evaluation.

:class:`Collate` is a class, not a closure, so ``DataLoader(..., num_workers=2)`` can send it
to worker processes; the tokenizer only needs ``encode(text)`` and the ids ``pad_id``,
``bos_id``, ``eos_id``, ``image_id`` and ``sep_id``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .. import _checks
from ..loss import IGNORE_INDEX
from ..utils import check_pixels

__all__ = ["Collate", "make_collate", "collate", "IGNORE_INDEX"]

_TASKS = ("qa", "caption", "auto")
_NEEDED = ("encode", "pad_id", "bos_id", "eos_id", "image_id", "sep_id")


class Collate:
    """Turn a list of samples (dicts with ``image`` and texts) into a batch (see the module
    docstring).

    Args:
        tokenizer: anything with ``encode(text) -> list[int]`` and the five special ids.
        task: ``"qa"`` (question -> answer), ``"caption"`` (image -> caption) or ``"auto"``
            (a sample's question if it has one, else its caption).
        image_tokens: how many ``<image>`` tokens to write (the model fills them).
        max_length: if given, a longer sequence is an error (nothing is cut silently).
    """

    def __init__(self, tokenizer, *, task: str = "qa", image_tokens: int = 1,
                 max_length: Optional[int] = None):
        missing = [name for name in _NEEDED if not hasattr(tokenizer, name)]
        if missing:
            raise TypeError(f"Collate: tokenizer must have {', '.join(_NEEDED)}; "
                            f"{type(tokenizer).__name__} lacks {', '.join(missing)}")
        self.tokenizer = tokenizer
        self.task = _checks.one_of(task, "task", "Collate", _TASKS)
        self.image_tokens = _checks.integer(image_tokens, "image_tokens", "Collate", minimum=0)
        self.max_length = None if max_length is None else \
            _checks.positive_int(max_length, "max_length", "Collate")
        self._ids: dict = {}  # text -> token ids: a data set repeats its questions and answers

    def _encode(self, text: str) -> List[int]:
        ids = self._ids.get(text)
        if ids is None:
            if len(self._ids) >= 100_000:
                self._ids.clear()
            ids = self._ids[text] = list(self.tokenizer.encode(text))
        return ids

    def encode(self, sample: dict, position: int = 0) -> Tuple[List[int], int]:
        """One sample's token ids and its prompt length."""
        tok = self.tokenizer
        task = self.task
        if task == "auto":
            task = "qa" if sample.get("question") is not None else "caption"
        needed = ("question", "answer") if task == "qa" else ("caption",)
        for field in needed:
            if not isinstance(sample.get(field), str):
                raise ValueError(f"Collate: sample {position} of the batch has no {field!r} "
                                 f"string (task={self.task!r})")
        prompt = [tok.bos_id] + [tok.image_id] * self.image_tokens
        if task == "qa":
            prompt += self._encode(sample["question"]) + [tok.sep_id]
            target = self._encode(sample["answer"])
        else:
            prompt += [tok.sep_id]
            target = self._encode(sample["caption"])
        ids = prompt + target + [tok.eos_id]
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"Collate: sample {position} of the batch is {len(ids)} tokens "
                             f"long, more than max_length={self.max_length}")
        return ids, len(prompt)

    def __call__(self, batch: Sequence[dict]) -> dict:
        if not isinstance(batch, (list, tuple)) or not batch:
            raise ValueError(f"Collate: batch must be a non-empty list of samples, "
                             f"got {batch!r:.80}")
        encoded = [self.encode(sample, k) for k, sample in enumerate(batch)]
        lengths = torch.tensor([len(ids) for ids, _ in encoded])
        prompt_lengths = torch.tensor([p for _, p in encoded])
        B, T = len(batch), int(lengths.max())
        input_ids = torch.full((B, T), self.tokenizer.pad_id, dtype=torch.long)
        for b, (ids, _) in enumerate(encoded):
            input_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        positions = torch.arange(T)
        attention_mask = positions < lengths[:, None]
        loss_mask = attention_mask & (positions >= prompt_lengths[:, None])
        out = dict(images=_stack_images(batch), input_ids=input_ids,
                   attention_mask=attention_mask, loss_mask=loss_mask,
                   labels=input_ids.masked_fill(~loss_mask, IGNORE_INDEX),
                   prompt_lengths=prompt_lengths, lengths=lengths)
        for field in ("question", "answer", "caption", "family"):
            out[field] = [sample.get(field) for sample in batch]
        return out

    def __repr__(self) -> str:
        return (f"Collate({type(self.tokenizer).__name__}, task={self.task!r}, "
                f"image_tokens={self.image_tokens}, max_length={self.max_length})")


def _stack_images(batch: Sequence[dict]) -> torch.Tensor:
    images = []
    for k, sample in enumerate(batch):
        image = sample.get("image")
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"Collate: sample {k} of the batch needs an 'image' tensor "
                             f"(3, H, W), got {got}")
        images.append(image)
    shapes = sorted({tuple(im.shape) for im in images})
    if len(shapes) > 1:
        raise ValueError(f"Collate: the images of a batch must share one shape, got {shapes}; "
                         f"resize them (e.g. FolderDataset(..., image_size=64))")
    stacked = torch.stack(images)
    check_pixels(stacked, "Collate")
    return stacked


def make_collate(tokenizer, **kwargs) -> Collate:
    """A picklable collate function for ``DataLoader(..., collate_fn=make_collate(tok))``."""
    return Collate(tokenizer, **kwargs)


def collate(batch: Sequence[dict], tokenizer, **kwargs) -> dict:
    """Collate one batch right away: ``collate(samples, tok)`` (see :class:`Collate`)."""
    return Collate(tokenizer, **kwargs)(batch)
