"""Render once, train many times: a data set held in memory, for GPUs the renderer cannot feed.

The shapes renderer draws a few thousand scenes a second on one CPU core. That is plenty for
a CPU run, which trains a few hundred samples a second, but not for a GPU that trains a
256-scene step in a few milliseconds: it would wait for the CPU (on a free Colab machine,
with two virtual cores, one data worker). :class:`RenderedPool` renders every sample of a
data set once, in worker processes, and keeps the pixels as bytes (``3 * H * W`` per
image: 12 KiB at 64 pixels, so 200,000 scenes take 2.5 GB) and the texts. After that a
sample is a slice of a tensor.

The price is variety: a pool repeats its scenes, where the renderer never shows the same
one twice. A pool of a few hundred thousand scenes is still far more than Sort-of-CLEVR's
10,000 images.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

__all__ = ["RenderedPool"]

_TEXT_FIELDS = ("caption", "question", "answer", "family")


def _pack(samples: Sequence[dict]) -> tuple:
    """A batch of samples -> (uint8 images, their texts): what a worker sends back."""
    images = torch.stack([s["image"] for s in samples])
    pixels = (images * 255).round().clamp_(0, 255).to(torch.uint8)
    texts = [{k: s.get(k) for k in _TEXT_FIELDS} for s in samples]
    return pixels, texts


class RenderedPool(torch.utils.data.Dataset):
    """Every sample of ``dataset``, rendered once and kept in memory.

    ``pool[i]`` is ``dataset[i]`` (its image and its ``caption``, ``question``, ``answer``
    and ``family``), with the image stored as 8-bit pixels, exactly what the shapes
    renderer draws. ``num_workers`` processes render it; ``progress`` shows a bar.
    """

    def __init__(self, dataset, *, num_workers: int = 0, progress: bool = False,
                 batch_size: int = 500):
        from tqdm.auto import tqdm

        n = len(dataset)
        if n < 1:
            raise ValueError(f"RenderedPool: dataset must hold at least one sample, got {n}")
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                             num_workers=num_workers, collate_fn=_pack)
        self.pixels: Optional[torch.Tensor] = None
        self.texts: List[Dict[str, Optional[str]]] = []
        start = 0
        with tqdm(total=n, desc="render once", unit="scene", disable=not progress,
                  mininterval=1.0) as bar:
            for pixels, texts in loader:
                if self.pixels is None:
                    self.pixels = torch.empty((n, *pixels.shape[1:]), dtype=torch.uint8)
                self.pixels[start:start + len(texts)] = pixels
                self.texts.extend(texts)
                start += len(texts)
                bar.update(len(texts))

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        return dict(image=self.pixels[index].float() / 255, **self.texts[index])

    @property
    def nbytes(self) -> int:
        """Memory the pixels take."""
        return self.pixels.numel()

    def __repr__(self) -> str:
        return (f"RenderedPool({len(self)} samples, {tuple(self.pixels.shape[1:])} pixels, "
                f"{self.nbytes / 2**20:.0f} MiB)")
