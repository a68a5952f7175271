"""A byte-level BPE tokenizer, trained from a corpus in seconds: text <-> integer ids.

Chapter 04 derives byte-pair encoding (BPE) step by step. What the module holds:

* :func:`split_words`: the pre-tokenisation, a regular expression in the spirit of GPT-2's
  (written for Python's own ``re``) that cuts text into words, numbers, punctuation runs and
  spaces; a word keeps the space in front of it (``" red"``). Merges never cross these cuts;
* :func:`count_pairs` and :func:`merge_pair`: the two steps BPE repeats;
* :class:`BPETokenizer`: :meth:`~BPETokenizer.train`, :meth:`~BPETokenizer.encode`,
  :meth:`~BPETokenizer.decode`, :meth:`~BPETokenizer.save` / :meth:`~BPETokenizer.load`
  (a small JSON file) and five special tokens.

The id layout is fixed: ids ``0..255`` are the 256 possible bytes, so *every* string has an
encoding and there is no "unknown" token; ids ``256..260`` are the special tokens
``<pad> <bos> <eos> <image> <sep>``; merge number ``r`` (in training order) makes id
``261 + r``. Ordinary text never encodes to a special id, even when it contains the
characters ``"<eos>"``: those are just five bytes. Special ids enter a sequence only on
purpose (``bos=True``, ``eos=True``, ``allow_special=True``, or the ids themselves).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Dict, Iterable, List, Sequence, Tuple

from . import _checks

__all__ = ["WORD_PATTERN", "split_words", "count_pairs", "merge_pair", "BPETokenizer"]

Pair = Tuple[int, int]

# Like GPT-2's pattern, but for the standard library's ``re`` (no ``\p{L}``): English
# contractions; an optional space and then letters (``[^\W\d_]``: word characters that are
# neither digits nor "_"), digits, or other symbols ("_" included); runs of white space
# (leaving the last space to the next word). The last branch catches anything left, so
# the pieces always join back to the text.
WORD_PATTERN = (
    r"'(?:[sdmt]|ll|ve|re)"
    r"| ?[^\W\d_]+"
    r"| ?\d+"
    r"| ?(?:[^\w\s]|_)+"
    r"|\s+(?!\S)"
    r"|\s+"
    r"|[\s\S]"
)
_WORD_RE = re.compile(WORD_PATTERN)


def split_words(text: str) -> List[str]:
    """Cut ``text`` into the pieces BPE works inside: ``"a red  box."`` ->
    ``["a", " red", " ", " box", "."]``. ``"".join(split_words(t)) == t`` always."""
    if not isinstance(text, str):
        raise TypeError(f"split_words: text must be a str, got {type(text).__name__}")
    return _WORD_RE.findall(text)


def count_pairs(words: Dict[Tuple[int, ...], int]) -> Counter:
    """How often each adjacent pair of ids occurs, over words weighted by their count.

    ``words`` maps a word (a tuple of token ids) to how many times it occurs in the corpus.
    """
    pairs: Counter = Counter()
    for word, count in words.items():
        for pair in zip(word, word[1:]):
            pairs[pair] += count
    return pairs


def merge_pair(ids: Sequence[int], pair: Pair, new_id: int) -> Tuple[int, ...]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, left to right
    (``(a, a, a)`` with pair ``(a, a)`` gives ``(new, a)``)."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return tuple(out)


def _best_pair(pairs: Dict[Pair, int]) -> Pair:
    """The most frequent pair; ties go to the smallest pair ``(a, b)``, so training is
    deterministic and does not depend on dictionary order."""
    return min(pairs, key=lambda p: (-pairs[p], p))


class BPETokenizer:
    """Byte-level byte-pair encoding with special tokens.

    Make one with :meth:`train` (or :meth:`load`); then ``encode(text) -> list[int]`` and
    ``decode(ids) -> str``. ``decode(encode(t)) == t`` for every string ``t`` that is valid
    Unicode (anything Python can write as UTF-8). ``len(tokenizer) == tokenizer.vocab_size``.
    """

    SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<image>", "<sep>")
    NUM_BYTES = 256

    MAX_MERGES = 1 << 17  # limits that keep a damaged file from exhausting memory
    MAX_TOKEN_BYTES = 256

    def __init__(self, merges: Iterable[Sequence[int]] = ()):
        """A tokenizer from a list of merges ``(a, b)``; merge ``r`` makes id ``261 + r``.

        ``BPETokenizer()`` (no merges) is the plain byte-level tokenizer: one id per byte.
        Usually you call :meth:`train` or :meth:`load` instead.
        """
        first = self.NUM_BYTES + len(self.SPECIAL_TOKENS)
        self.merges: List[Pair] = []
        self._ranks: Dict[Pair, int] = {}  # pair -> the id it merges into
        self._bytes: List[bytes] = [bytes([b]) for b in range(self.NUM_BYTES)]
        self._bytes += [s.encode("utf-8") for s in self.SPECIAL_TOKENS]
        for r, pair in enumerate(merges):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2 \
                    or not all(map(_checks.is_int, pair)):
                raise TypeError(f"BPETokenizer: merge {r} must be a pair of ints, got {pair!r}")
            a, b = pair
            new_id = first + r
            for i in (a, b):
                if not (0 <= i < new_id) or self.NUM_BYTES <= i < first:
                    raise ValueError(
                        f"BPETokenizer: merge {r} = {tuple(pair)} refers to id {i}, but it may "
                        f"only join byte ids 0..255 or ids made by earlier merges "
                        f"({first}..{new_id - 1})")
            if (a, b) in self._ranks:
                raise ValueError(f"BPETokenizer: merge {r} = {(a, b)} repeats an earlier merge")
            if r >= self.MAX_MERGES or len(self._bytes[a]) + len(self._bytes[b]) > self.MAX_TOKEN_BYTES:
                # A damaged or hostile file: chained merges make tokens (and memory) grow
                # with the square of their number.
                raise ValueError(f"BPETokenizer: merge {r} makes more than {self.MAX_MERGES} "
                                 f"merges or a token over {self.MAX_TOKEN_BYTES} bytes; no "
                                 f"tokenizer of this book comes near that: the merges are damaged")
            self.merges.append((a, b))
            self._ranks[(a, b)] = new_id
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self._special_ids = {s: self.NUM_BYTES + k for k, s in enumerate(self.SPECIAL_TOKENS)}
        self._cache: Dict[str, Tuple[int, ...]] = {}

    # ----------------------------------------------------------------------------------
    # Ids and vocabulary
    # ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """256 bytes + 5 special tokens + one id per merge."""
        return len(self._bytes)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_id(self) -> int:
        return self._special_ids["<pad>"]

    @property
    def bos_id(self) -> int:
        return self._special_ids["<bos>"]

    @property
    def eos_id(self) -> int:
        return self._special_ids["<eos>"]

    @property
    def image_id(self) -> int:
        """The placeholder that stands where the image's tokens go in a sequence."""
        return self._special_ids["<image>"]

    @property
    def sep_id(self) -> int:
        """The separator between a question and its answer."""
        return self._special_ids["<sep>"]

    @property
    def special_ids(self) -> Dict[str, int]:
        """``{"<pad>": 256, "<bos>": 257, ...}``."""
        return dict(self._special_ids)

    def is_special(self, i: int) -> bool:
        return self.NUM_BYTES <= i < self.NUM_BYTES + len(self.SPECIAL_TOKENS)

    def token_bytes(self, i: int) -> bytes:
        """The bytes token ``i`` stands for (a special token: its name, e.g. ``b"<eos>"``)."""
        return self._bytes[self._check_id(i, "i", "token_bytes")]

    def token_str(self, i: int) -> str:
        """Token ``i`` as text, for showing tokens. A token that holds only part of a
        multi-byte character shows the replacement character ``"\\ufffd"``."""
        return self.token_bytes(i).decode("utf-8", errors="replace")

    def _check_id(self, i, name: str, fn: str) -> int:
        if hasattr(i, "item") and getattr(i, "ndim", 1) == 0:  # a 0-d tensor or NumPy int
            i = i.item()
        if not _checks.is_int(i):
            raise TypeError(f"{fn}: {name} must be an int token id, got {type(i).__name__}")
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"{fn}: {name} = {i} is out of range; token ids run from 0 "
                             f"to vocab_size - 1 = {self.vocab_size - 1}")
        return i

    # ----------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *,
              progress: bool = False) -> "BPETokenizer":
        """Learn ``vocab_size - 261`` merges from ``texts`` (an iterable of strings).

        Each text is cut by :func:`split_words`; identical words are counted once with
        their count, so the work grows with the number of *different* words. Each step
        merges the most frequent adjacent pair (ties: the smallest pair of ids) and updates
        the pair counts of only the words that contained it. Training is deterministic.

        If the corpus runs out of pairs (every word is already a single token), training
        stops early and the tokenizer is smaller than ``vocab_size``: check ``len()``.
        """
        fn = "BPETokenizer.train"
        first = cls.NUM_BYTES + len(cls.SPECIAL_TOKENS)
        if not _checks.is_int(vocab_size):
            raise TypeError(f"{fn}: vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < first:
            raise ValueError(f"{fn}: vocab_size must be at least 256 bytes + "
                             f"{len(cls.SPECIAL_TOKENS)} special tokens = {first}, "
                             f"got {vocab_size}")
        if isinstance(texts, (str, bytes)):
            raise TypeError(f"{fn}: texts must be an iterable of strings (e.g. a list), got a "
                            f"single {type(texts).__name__}; wrap it in a list")
        word_counts: Counter = Counter()
        for k, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{fn}: texts[{k}] must be a str, got {type(text).__name__}")
            word_counts.update(split_words(text))

        # Each different word as a tuple of byte ids, with its count.
        words = [tuple(w.encode("utf-8")) for w in word_counts]
        counts = list(word_counts.values())
        pairs = count_pairs(dict(zip(words, counts)))
        where: Dict[Pair, set] = {}  # pair -> indices of the words that (may) hold it
        for k, word in enumerate(words):
            for pair in zip(word, word[1:]):
                where.setdefault(pair, set()).add(k)

        merges: List[Pair] = []
        steps = range(vocab_size - first)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="BPE merges")
        for step in steps:
            if not pairs:
                break  # every word is one token: nothing left to merge
            best = _best_pair(pairs)
            new_id = first + step
            merges.append(best)
            for k in where.pop(best):
                old = words[k]
                new = merge_pair(old, best, new_id)
                if new == old:
                    continue
                for pair in zip(old, old[1:]):  # take the word's old pairs out ...
                    pairs[pair] -= counts[k]
                    if pairs[pair] == 0:
                        del pairs[pair]
                for pair in zip(new, new[1:]):  # ... and put its new pairs in
                    pairs[pair] += counts[k]
                    where.setdefault(pair, set()).add(k)
                words[k] = new
        if progress:
            steps.close()
        return cls(merges)

    # ----------------------------------------------------------------------------------
    # Encoding and decoding
    # ----------------------------------------------------------------------------------

    def _encode_word(self, word: str) -> Tuple[int, ...]:
        """One word: its bytes, then merge the adjacent pair of lowest rank (earliest
        learned) again and again until no pair has a merge. Cached per word."""
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        ids = tuple(word.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self._ranks.get(p, float("inf")))
            if pair not in self._ranks:
                break
            ids = merge_pair(ids, pair, self._ranks[pair])
        if len(self._cache) >= 100_000:  # a bound, in case of endless different words
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _encode_ordinary(self, text: str) -> List[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"BPETokenizer.encode: text is not valid Unicode: {err.reason} "
                             f"at position {err.start} ({text[err.start:err.end]!r})") from None
        out: List[int] = []
        for word in split_words(text):
            out.extend(self._encode_word(word))
        return out

    def encode(self, text: str, *, bos: bool = False, eos: bool = False,
               allow_special: bool = False) -> List[int]:
        """Text -> token ids.

        ``bos``/``eos`` put ``<bos>``/``<eos>`` around the ids. The characters ``"<eos>"``
        in ``text`` are ordinary text (five bytes) unless ``allow_special=True``, which
        turns the special tokens' names in ``text`` into their ids (for prompts such as
        ``"<image> what colour is it? <sep>"``).
        """
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.encode: text must be a str, got {type(text).__name__}")
        ids = [self.bos_id] if bos else []
        if allow_special:
            pattern = "(" + "|".join(re.escape(s) for s in self.SPECIAL_TOKENS) + ")"
            for k, part in enumerate(re.split(pattern, text)):
                if k % 2:  # re.split puts the matched separators at odd positions
                    ids.append(self._special_ids[part])
                elif part:
                    ids.extend(self._encode_ordinary(part))
        else:
            ids.extend(self._encode_ordinary(text))
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Token ids (a list, or a 1-D tensor or array) -> text.

        Special tokens decode to their names (``"<eos>"``) unless ``skip_special=True``
        drops them. The bytes are read as UTF-8 with ``errors="replace"``: ids that cut a
        multi-byte character apart (a model's output can) give ``"\\ufffd"`` instead of an
        error. Ids produced by :meth:`encode` always decode exactly.
        """
        fn = "BPETokenizer.decode"
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"{fn}: ids must be a sequence of ints, got {type(ids).__name__}")
        if hasattr(ids, "tolist"):  # a tensor or a NumPy array
            if getattr(ids, "ndim", 1) != 1:
                raise ValueError(f"{fn}: ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        parts = []
        for k, i in enumerate(ids):
            i = self._check_id(i, f"ids[{k}]", fn)
            if skip_special and self.is_special(i):
                continue
            parts.append(self._bytes[i])
        return b"".join(parts).decode("utf-8", errors="replace")

    # ----------------------------------------------------------------------------------
    # Saving and loading
    # ----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": "mmgpt-bpe", "version": 1, "pattern": WORD_PATTERN,
                "special_tokens": list(self.SPECIAL_TOKENS),
                "merges": [list(p) for p in self.merges]}

    def save(self, path) -> None:
        """Write the tokenizer to a small JSON file (the merges are all it needs)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, separators=(",", ":"))
        os.replace(tmp, path)  # atomic: a crash never leaves half a file

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        """Read a tokenizer written by :meth:`save`."""
        fn = "BPETokenizer.load"
        with open(os.fspath(path), encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{fn}: {path} is not JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != "mmgpt-bpe":
            raise ValueError(f"{fn}: {path} is not a tokenizer saved by BPETokenizer.save")
        for key, expected in (("version", 1), ("pattern", WORD_PATTERN),
                              ("special_tokens", list(cls.SPECIAL_TOKENS))):
            if data.get(key) != expected:
                raise ValueError(f"{fn}: {path} has {key} = {data.get(key)!r}, but this "
                                 f"version of mmgpt expects {expected!r}")
        return cls(tuple(p) for p in data["merges"])

    def __eq__(self, other) -> bool:
        return isinstance(other, BPETokenizer) and self.merges == other.merges

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"
