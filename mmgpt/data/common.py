"""What the book's datasets share: a tiny portable random generator, number words, checks.

Every synthetic sample is a pure function of ``(seed, split, index)``: it gets its own
:class:`Rng`, seeded from those three numbers, so ``ds[i]`` never depends on which samples
were made before it (index-addressable, and identical in every DataLoader worker).

:class:`Rng` draws everything from Python's ``random.Random(seed).random()``, the one stream
the Python documentation promises never to change between versions; NumPy's generators
make no such promise for their derived methods. So a scene's description is the same on
every machine and Python version; its pixels are the same wherever Pillow draws the same.
"""
from __future__ import annotations

import random
from typing import List, MutableSequence, Sequence, Tuple, TypeVar

from PIL import Image

from .._checks import is_int

__all__ = ["Rng", "NUMBER_WORDS", "BILINEAR", "SPLITS", "sample_seed", "check_range",
           "check_families", "check_index"]

T = TypeVar("T")

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")
SPLITS = ("train", "test", "heldout")
BILINEAR = getattr(Image, "Resampling", Image).BILINEAR  # Pillow >= 9.1 has Image.Resampling


class Rng:
    """A small random generator built only on ``random.Random(seed).random()``.

    ``int(u * n)`` with ``u`` uniform in ``[0, 1)`` picks ``0..n-1``; the bias is far below
    anything a dataset of this size could show.
    """

    __slots__ = ("random",)

    def __init__(self, seed: int):
        self.random = random.Random(seed).random

    def below(self, n: int) -> int:
        """A uniform int in ``0..n-1``."""
        return int(self.random() * n)

    def integers(self, low: int, high: int) -> int:
        """A uniform int in ``low..high`` (both included)."""
        return low + int(self.random() * (high - low + 1))

    def choice(self, seq: Sequence[T]) -> T:
        return seq[int(self.random() * len(seq))]

    def shuffle(self, seq: MutableSequence) -> None:
        """Fisher-Yates, in place."""
        for i in range(len(seq) - 1, 0, -1):
            j = int(self.random() * (i + 1))
            seq[i], seq[j] = seq[j], seq[i]

    def sample(self, seq: Sequence[T], k: int) -> List[T]:
        """``k`` distinct elements, in random order."""
        pool = list(seq)
        for i in range(k):
            j = i + int(self.random() * (len(pool) - i))
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def sample_seed(dataset_tag: int, seed: int, split: str, index: int) -> int:
    """The seed of sample ``index``: distinct for every (dataset, seed, split, index)."""
    return (((dataset_tag << 32) + seed) * 4 + SPLITS.index(split)) << 40 | index


# What sample_seed can pack: a dataset's length (its indices) and its seed.
MAX_LENGTH = 2**40 - 1
MAX_SEED = 2**32 - 1


def check_range(value, name: str, owner: str, low: int, high: int) -> Tuple[int, int]:
    """An int or an inclusive ``(min, max)`` pair, both within ``low..high``."""
    pair = (value, value) if is_int(value) else value
    ok = (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(is_int, pair))
          and low <= pair[0] <= pair[1] <= high)
    if not ok:
        raise ValueError(f"{owner}: {name} must be an int or a (min, max) pair with "
                         f"{low} <= min <= max <= {high}, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_families(families, known: Tuple[str, ...], owner: str) -> Tuple[str, ...]:
    """A family or a list of families, each one of ``known``, at least one, as a tuple."""
    families = (families,) if isinstance(families, str) else tuple(families)
    for f in families:
        if f not in known:
            raise ValueError(f"{owner}: unknown family {f!r}; the families are {known}")
    if not families:
        raise ValueError(f"{owner}: families must name at least one family, got none")
    return families


def check_index(index, length: int, owner: str) -> int:
    """Sequence-style indexing: negative indices count from the end; IndexError past it."""
    if not is_int(index):
        try:  # numpy and torch integer scalars
            index = int(index.__index__())
        except (AttributeError, TypeError):
            raise TypeError(f"{owner}: index must be an int, got {type(index).__name__}") from None
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"{owner}: index out of range for a dataset of length {length}")
    return index
