"""Handwritten digit strings: real handwriting, 2-4 digits to an image, with captions.

The digits are scikit-learn's 1,797 bundled 8x8 scans (``sklearn.datasets.load_digits``:
the test half of the UCI "optical recognition of handwritten digits" set, by 13 writers),
so nothing is downloaded. They are split once, by position in that file: the first 1,437
are the ``"train"`` sources and the last 360 the ``"test"`` sources, so a test image never
reuses a scan seen in training (the same 13 people may have written both). scikit-learn is
imported only when pixels are first needed.

A sample shows ``n`` digits side by side, each scaled to a square cell of
``image_size // max_digits`` pixels, dark ink on white, at a random place on a white
``image_size x image_size`` canvas. Its caption reads them ("three seven one"), and its
question is one of three families, each answer chosen first and uniformly:

========  ==============================  ======================
family    example question                answers
========  ==============================  ======================
length    how many digits are there?      two .. four
count     how many sevens are there?      zero .. four
read      what is the second digit?       zero .. nine
========  ==============================  ======================
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from .. import _checks
from .common import (BILINEAR, MAX_LENGTH, MAX_SEED, NUMBER_WORDS, Rng, check_families,
                     check_index, check_range, sample_seed)

__all__ = ["DIGIT_FAMILIES", "NUM_TRAIN_SOURCES", "DigitString", "load_digit_sources",
           "DigitStringsDataset"]

DIGIT_FAMILIES = ("length", "count", "read")
NUM_TRAIN_SOURCES = 1437  # the first 80% of scikit-learn's 1,797 digits; the rest are "test"
_TAG = 2
_PLURALS = ("zeros", "ones", "twos", "threes", "fours", "fives", "sixes", "sevens", "eights",
            "nines")
_ORDINALS = ("first", "second", "third", "fourth")
_LENGTH_Q = ("how many digits are there?", "how many digits does the picture show?")
_COUNT_Q = ("how many {d} are there?", "how many {d} does the number have?")
_READ_Q = ("what is the {o} digit?", "which digit comes {o}?")


@functools.lru_cache(maxsize=1)
def _load() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("DigitStringsDataset needs scikit-learn (its bundled digits): "
                          "pip install scikit-learn") from None
    digits = load_digits()
    ink = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 -> 0..255
    return ink, digits.target.astype(np.int64)


def load_digit_sources(split: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scans a split draws from: ``(images uint8 (N, 8, 8), labels (N,), ids (N,))``,
    ``ids`` being their positions in ``load_digits()`` (ink is 255, paper 0)."""
    _checks.one_of(split, "split", "load_digit_sources", ("train", "test"))
    images, labels = _load()
    ids = np.arange(len(labels))
    keep = ids < NUM_TRAIN_SOURCES if split == "train" else ids >= NUM_TRAIN_SOURCES
    return images[keep], labels[keep], ids[keep]


@dataclass(frozen=True)
class DigitString:
    """What one image shows: the digits (left to right), the scans they came from (ids
    into ``load_digits()``, ``None`` when only described), the cell size and where the
    string's top-left corner is."""

    digits: Tuple[int, ...]
    sources: Optional[Tuple[int, ...]]
    cell: int
    left: int
    top: int
    image_size: int

    @property
    def text(self) -> str:
        return " ".join(NUMBER_WORDS[d] for d in self.digits)


class DigitStringsDataset:
    """Strings of 2-4 handwritten digits: ``ds[i]`` is a dict with ``image`` (float tensor
    ``(3, image_size, image_size)`` in ``[0, 1]``), ``caption`` ("three seven one"),
    ``question``, ``answer``, ``family`` and ``scene`` (a :class:`DigitString`).

    Args:
        split: ``"train"`` or ``"test"``: disjoint sets of source scans.
        length: how many samples ``len(ds)`` says there are.
        num_digits: digits per image, an int or an inclusive ``(min, max)`` within 1..4.
        image_size: the canvas side; each digit gets ``image_size // max_digits`` pixels.
        seed: ``ds[i]`` depends on ``(seed, split, i)`` only.
        families: question families to draw from; default all of :data:`DIGIT_FAMILIES`.
    """

    def __init__(self, split: str = "train", length: int = 10_000, *, num_digits=(2, 4),
                 image_size: int = 32, seed: int = 0, families: Optional[Iterable[str]] = None):
        owner = "DigitStringsDataset"
        self.split = _checks.one_of(split, "split", owner, ("train", "test"))
        self.length = _checks.integer(length, "length", owner, 0, MAX_LENGTH)
        self.seed = _checks.integer(seed, "seed", owner, 0, MAX_SEED)
        self.num_digits = check_range(num_digits, "num_digits", owner, 1, len(_ORDINALS))
        # 8 pixels (a scan's size) per digit
        self.image_size = _checks.integer(image_size, "image_size", owner, 8 * self.num_digits[1])
        self.cell = image_size // self.num_digits[1]
        self.families = DIGIT_FAMILIES if families is None else \
            check_families(families, DIGIT_FAMILIES, owner)

    def __len__(self) -> int:
        return self.length

    def _text(self, rng: Rng):
        """Digits, question, answer and family, drawn answer first."""
        lo, hi = self.num_digits
        family = rng.choice(self.families)
        if family == "length":
            n = rng.integers(lo, hi)
            digits = [rng.below(10) for _ in range(n)]
            return digits, rng.choice(_LENGTH_Q), NUMBER_WORDS[n], family
        if family == "count":
            d, k = rng.below(10), rng.integers(0, hi)
            n = rng.integers(max(lo, k), hi)
            others = [x for x in range(10) if x != d]
            digits = [d] * k + [rng.choice(others) for _ in range(n - k)]
            rng.shuffle(digits)
            return digits, rng.choice(_COUNT_Q).format(d=_PLURALS[d]), NUMBER_WORDS[k], family
        n = rng.integers(lo, hi)
        digits = [rng.below(10) for _ in range(n)]
        place = rng.below(n)
        ordinal = "last" if place == n - 1 and n > 1 and rng.random() < 0.5 else _ORDINALS[place]
        return digits, rng.choice(_READ_Q).format(o=ordinal), NUMBER_WORDS[digits[place]], family

    def _sample(self, index: int, with_sources: bool) -> dict:
        index = check_index(index, self.length, "DigitStringsDataset")
        rng = Rng(sample_seed(_TAG, self.seed, self.split, index))
        digits, question, answer, family = self._text(rng)
        left = rng.integers(0, self.image_size - len(digits) * self.cell)
        top = rng.integers(0, self.image_size - self.cell)
        sources = None
        if with_sources:  # drawn last, so describe() needs no scikit-learn
            pools, chosen = _pools(self.split), []
            for d in digits:  # distinct scans, even for a repeated digit
                source = int(rng.choice(pools[d]))
                while source in chosen:
                    source = int(rng.choice(pools[d]))
                chosen.append(source)
            sources = tuple(chosen)
        scene = DigitString(tuple(digits), sources, self.cell, left, top, self.image_size)
        return dict(caption=scene.text, question=question, answer=answer, family=family,
                    scene=scene)

    def describe(self, index: int) -> dict:
        """Everything about sample ``index`` except the pixels and the source scans."""
        return self._sample(index, with_sources=False)

    def __getitem__(self, index: int) -> dict:
        sample = self._sample(index, with_sources=True)
        return dict(image=render_digit_string(sample["scene"]), **sample)

    def render(self, index: int) -> Image.Image:
        array = (self[index]["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return Image.fromarray(array)

    def __repr__(self) -> str:
        return (f"DigitStringsDataset(split={self.split!r}, length={self.length}, num_digits="
                f"{self.num_digits}, image_size={self.image_size}, seed={self.seed})")


@functools.lru_cache(maxsize=2)
def _pools(split: str) -> Tuple[np.ndarray, ...]:
    """For each digit 0..9, the ids of the split's scans of it."""
    _, labels, ids = load_digit_sources(split)
    return tuple(ids[labels == d] for d in range(10))


@functools.lru_cache(maxsize=8)
def _scaled(cell: int) -> np.ndarray:
    """All 1,797 scans resized to ``cell x cell`` (bilinear), as floats in [0, 1] of ink."""
    images, _ = _load()
    if cell == 8:
        return images.astype(np.float32) / 255.0
    return np.stack([np.asarray(Image.fromarray(im).resize((cell, cell), BILINEAR),
                                dtype=np.float32) / 255.0 for im in images])


def render_digit_string(scene: DigitString) -> torch.Tensor:
    """The image of a :class:`DigitString` with sources: ``(3, S, S)``, white paper, dark ink."""
    if scene.sources is None:
        raise ValueError("render_digit_string: scene.sources is None (a described sample); "
                         "use the dataset's ds[i] to get the pixels")
    ink = np.zeros((scene.image_size, scene.image_size), dtype=np.float32)
    scans = _scaled(scene.cell)
    for k, source in enumerate(scene.sources):
        x = scene.left + k * scene.cell
        ink[scene.top:scene.top + scene.cell, x:x + scene.cell] = scans[source]
    return torch.from_numpy(1.0 - ink).expand(3, -1, -1).contiguous()
