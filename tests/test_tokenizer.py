"""Tests for ``mmgpt.tokenizer``: the byte-level BPE tokenizer.

* round trips ``decode(encode(t)) == t`` on random Unicode (code points from every plane,
  emoji and CJK included), on random bytes read as UTF-8, and on Chinese text;
* :func:`split_words` never loses a character;
* ``encode`` agrees with a slow reference BPE (apply every merge in rank order) on the
  training data and on random texts, and ``train`` agrees with a slow reference trainer
  (recount all pairs at every step);
* special tokens: ordinary text never yields a special id, specials decode to their names,
  ``skip_special``, ``bos``/``eos``, ``allow_special``;
* save/load gives an equal tokenizer; training is deterministic and independent of the
  order of the texts; ``vocab_size`` is honoured;
* bad inputs raise ``ValueError``/``TypeError`` naming the argument.
"""
from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch

from mmgpt.tokenizer import BPETokenizer, count_pairs, merge_pair, split_words

SEEDS = range(6)
FIRST = 256 + len(BPETokenizer.SPECIAL_TOKENS)  # the id of the first merge
WORDS = ("a red circle square triangle blue green left of right above below the how many "
         "shapes are there is it what colour yes no one two three four seven").split()
CHINESE = "多模态学习是一种利用多种数据模态（如文本、图像、音频等）进行学习的方法。图像被卷积神经网络编码成特征向量。"


def _random_text(rng: random.Random, n: int = 40) -> str:
    """A mix of the book's words, punctuation, digits, odd spacing, Chinese and emoji."""
    pieces = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.6:
            pieces.append(rng.choice(WORDS))
        elif roll < 0.7:
            pieces.append(rng.choice(["?", ".", ",", "'s", "!!", "_", "-"]))
        elif roll < 0.8:
            pieces.append(str(rng.randint(0, 999)))
        elif roll < 0.9:
            start = rng.randrange(len(CHINESE) - 4)
            pieces.append(CHINESE[start:start + rng.randint(1, 4)])
        else:
            pieces.append(chr(rng.randint(0x1F300, 0x1F64F)))
        pieces.append(rng.choice([" ", " ", " ", "", "  ", "\n", "\t "]))
    return "".join(pieces)


def _random_code_points(rng: random.Random, n: int) -> str:
    """Random characters: ASCII, Latin, CJK, emoji and anything else that is valid Unicode
    (every code point except the surrogates U+D800..U+DFFF, which UTF-8 cannot hold)."""
    ranges = [(0x00, 0x7F), (0x80, 0x7FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF),
              (0x0800, 0xD7FF), (0xE000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(n))


@pytest.fixture(scope="module")
def corpus() -> list:
    rng = random.Random(1234)
    return [_random_text(rng) for _ in range(300)] + [CHINESE] * 5


@pytest.fixture(scope="module")
def tok(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus, 600)


# ---------------------------------------------------------------------------------------------
# Slow references
# ---------------------------------------------------------------------------------------------

def _reference_encode(text: str, merges) -> list:
    """BPE the slow, obvious way: each word's bytes, then every merge in the order it was
    learned, replacing all occurrences left to right."""
    out = []
    for word in split_words(text):
        ids = list(word.encode("utf-8"))
        for rank, (a, b) in enumerate(merges):
            ids = list(merge_pair(ids, (a, b), FIRST + rank))
        out.extend(ids)
    return out


def _reference_train(texts, vocab_size: int) -> list:
    """Recount every pair over all words at every step; merge the most frequent pair
    (ties: the smallest pair)."""
    words = Counter(tuple(w.encode("utf-8")) for t in texts for w in split_words(t))
    merges = []
    for new_id in range(FIRST, vocab_size):
        pairs = count_pairs(words)
        if not pairs:
            break
        top = max(pairs.values())
        best = min(p for p, c in pairs.items() if c == top)
        merges.append(best)
        merged = Counter()
        for word, count in words.items():
            merged[merge_pair(word, best, new_id)] += count
        words = merged
    return merges


# ---------------------------------------------------------------------------------------------
# Pre-tokenisation and the two BPE steps
# ---------------------------------------------------------------------------------------------

def test_split_words_example():
    assert split_words("a red  box. It's 42_x\n\n 你好，世界") == [
        "a", " red", " ", " box", ".", " It", "'s", " 42", "_", "x", "\n\n", " 你好", "，", "世界"]


@pytest.mark.parametrize("seed", SEEDS)
def test_split_words_joins_back(seed):
    rng = random.Random(seed)
    for text in (_random_text(rng), _random_code_points(rng, 200), "", " ", "\n\n\t"):
        pieces = split_words(text)
        assert "".join(pieces) == text
        assert all(pieces)


def test_merge_pair_left_to_right():
    assert merge_pair((1, 1, 1), (1, 1), 9) == (9, 1)
    assert merge_pair((1, 1, 1, 1), (1, 1), 9) == (9, 9)
    assert merge_pair((1, 2, 3, 1, 2), (1, 2), 9) == (9, 3, 9)
    assert merge_pair((), (1, 2), 9) == ()


def test_count_pairs_weighted():
    assert count_pairs({(1, 2, 1, 2): 3, (2, 1): 1}) == Counter({(1, 2): 6, (2, 1): 4})


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_round_trip_random_code_points(tok, seed):
    rng = random.Random(seed)
    for n in (0, 1, 2, 10, 300):
        text = _random_code_points(rng, n)
        ids = tok.encode(text)
        assert all(0 <= i < len(tok) and not tok.is_special(i) for i in ids)
        assert tok.decode(ids) == text


@pytest.mark.parametrize("seed", SEEDS)
def test_round_trip_random_bytes(tok, seed):
    rng = random.Random(seed)
    for n in (1, 7, 500):
        text = bytes(rng.randrange(256) for _ in range(n)).decode("utf-8", errors="replace")
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("seed", SEEDS)
def test_round_trip_mixed_text(tok, seed):
    text = _random_text(random.Random(100 + seed), n=200)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_chinese_round_trip_and_compression():
    tok = BPETokenizer.train([CHINESE] * 3, 400)
    ids = tok.encode(CHINESE)
    assert tok.decode(ids) == CHINESE
    assert len(ids) < len(CHINESE.encode("utf-8")) / 2  # merges learned on it compress it
    unseen = "卷积和注意力：图像到文本。"
    assert tok.decode(tok.encode(unseen)) == unseen


def test_untrained_tokenizer_is_bytes():
    tok = BPETokenizer()
    assert len(tok) == FIRST
    assert tok.encode("héllo") == list("héllo".encode("utf-8"))
    assert tok.decode(tok.encode("héllo 🎉")) == "héllo 🎉"


def test_decode_cut_character_is_replaced_not_an_error(tok):
    ids = BPETokenizer().encode("你")  # three bytes
    assert len(ids) == 3
    assert tok.decode(ids[:1]) == "\ufffd"
    assert tok.decode(ids[:2] + tok.encode(" ok")) == "\ufffd ok"


def test_decode_accepts_tensors_and_arrays(tok):
    ids = tok.encode("a red circle", bos=True, eos=True)
    text = tok.decode(ids)
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.decode(np.array(ids)) == text
    assert tok.decode(tuple(ids)) == text
    assert tok.decode([torch.tensor(i) for i in ids]) == text


# ---------------------------------------------------------------------------------------------
# Against the slow references
# ---------------------------------------------------------------------------------------------

def test_encode_matches_reference_on_training_data(tok, corpus):
    for text in corpus[:60] + [CHINESE]:
        assert tok.encode(text) == _reference_encode(text, tok.merges)


@pytest.mark.parametrize("seed", SEEDS)
def test_encode_matches_reference_on_random_text(tok, seed):
    rng = random.Random(500 + seed)
    for text in (_random_text(rng, n=60), _random_code_points(rng, 50)):
        assert tok.encode(text) == _reference_encode(text, tok.merges)


@pytest.mark.parametrize("seed", SEEDS)
def test_train_matches_reference_trainer(seed):
    rng = random.Random(seed)
    texts = [_random_text(rng, n=rng.randint(1, 30)) for _ in range(rng.randint(1, 40))]
    vocab_size = FIRST + rng.randint(0, 150)
    assert BPETokenizer.train(texts, vocab_size).merges == _reference_train(texts, vocab_size)


def test_token_bytes_of_merges(tok):
    for rank, (a, b) in enumerate(tok.merges):
        assert tok.token_bytes(FIRST + rank) == tok.token_bytes(a) + tok.token_bytes(b)
    assert tok.token_bytes(65) == b"A"
    assert tok.token_str(tok.eos_id) == "<eos>"
    assert tok.token_str(0xE4) == "\ufffd"  # a lone lead byte of a 3-byte character


# ---------------------------------------------------------------------------------------------
# Special tokens
# ---------------------------------------------------------------------------------------------

def test_special_ids(tok):
    ids = [tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id, tok.sep_id]
    assert ids == list(range(256, FIRST))
    assert [tok.decode([i]) for i in ids] == list(BPETokenizer.SPECIAL_TOKENS)
    assert tok.special_ids == dict(zip(BPETokenizer.SPECIAL_TOKENS, ids))


@pytest.mark.parametrize("seed", SEEDS)
def test_ordinary_text_never_yields_special_ids(seed):
    rng = random.Random(seed)
    specials = list(BPETokenizer.SPECIAL_TOKENS)
    # Train on text full of the special names, so merges for "<eos>" etc. exist.
    texts = [" ".join(rng.choice(specials + WORDS) for _ in range(20)) for _ in range(50)]
    tok = BPETokenizer.train(texts, 400)
    for text in texts[:10] + ["<eos>", "<pad><bos><image><sep>", " <eos>"]:
        ids = tok.encode(text)
        assert not any(tok.is_special(i) for i in ids)
        assert tok.decode(ids) == text
    assert tok.encode("<eos>") != [tok.eos_id]


def test_bos_eos_and_skip_special(tok):
    ids = tok.encode("two red squares", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert ids[1:-1] == tok.encode("two red squares")
    assert tok.decode(ids) == "<bos>two red squares<eos>"
    assert tok.decode(ids, skip_special=True) == "two red squares"
    assert tok.decode([tok.pad_id] * 3, skip_special=True) == ""


def test_allow_special(tok):
    ids = tok.encode("<image>what colour?<sep> red<eos>", allow_special=True)
    assert ids[0] == tok.image_id and ids[-1] == tok.eos_id
    assert tok.sep_id in ids
    assert ids[1:ids.index(tok.sep_id)] == tok.encode("what colour?")
    assert tok.decode(ids) == "<image>what colour?<sep> red<eos>"
    assert tok.encode("<eos", allow_special=True) == tok.encode("<eos")


# ---------------------------------------------------------------------------------------------
# Training: determinism and vocab_size; save and load
# ---------------------------------------------------------------------------------------------

def test_training_is_deterministic_and_order_free(corpus):
    a = BPETokenizer.train(corpus, 500)
    b = BPETokenizer.train(list(corpus), 500)
    shuffled = list(corpus)
    random.Random(0).shuffle(shuffled)
    c = BPETokenizer.train(iter(shuffled), 500)  # any iterable, any order
    assert a.merges == b.merges == c.merges
    assert a == c


@pytest.mark.parametrize("vocab_size", [FIRST, FIRST + 1, 300, 600])
def test_vocab_size_honoured(corpus, vocab_size):
    tok = BPETokenizer.train(corpus, vocab_size)
    assert len(tok) == tok.vocab_size == vocab_size
    assert len(tok.merges) == vocab_size - FIRST
    assert max(tok.encode(" ".join(corpus[:20]))) < vocab_size


def test_training_stops_when_pairs_run_out():
    tok = BPETokenizer.train(["ab ab ab"], 1000)  # (a, b) -> X, then (" ", X): no more pairs
    assert tok.merges == [(ord("a"), ord("b")), (ord(" "), FIRST)]
    assert len(tok) == FIRST + 2
    assert tok.encode("ab ab") == [FIRST, FIRST + 1]
    assert len(BPETokenizer.train([], 400)) == FIRST


def test_save_load(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded == tok and loaded.merges == tok.merges and len(loaded) == len(tok)
    text = _random_text(random.Random(7), n=100)
    assert loaded.encode(text) == tok.encode(text)
    assert path.stat().st_size < 20 * len(tok.merges) + 500  # small: a list of merges
    BPETokenizer.load(str(path))  # str paths work too


def test_progress_bar_gives_same_merges(corpus):
    assert BPETokenizer.train(corpus, 300, progress=True) == BPETokenizer.train(corpus, 300)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------

def test_bad_training_arguments(corpus):
    with pytest.raises(ValueError, match="vocab_size must be at least .* = 261, got 260"):
        BPETokenizer.train(corpus, 260)
    with pytest.raises(TypeError, match="vocab_size must be an int, got float"):
        BPETokenizer.train(corpus, 300.0)
    with pytest.raises(TypeError, match="texts must be an iterable of strings.*single str"):
        BPETokenizer.train("a red circle", 300)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        BPETokenizer.train(["a", 3], 300)


def test_bad_encode_arguments(tok):
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tok.encode(b"abc")
    with pytest.raises(TypeError, match="text must be a str, got list"):
        tok.encode(["abc"])
    lone_surrogate = b"ab\xff".decode("utf-8", errors="surrogateescape")
    with pytest.raises(ValueError, match="text is not valid Unicode.*position 2"):
        tok.encode(lone_surrogate)


def test_bad_decode_arguments(tok):
    with pytest.raises(ValueError, match=r"ids\[1\] = 600 is out of range.*599"):
        tok.decode([1, 600])
    with pytest.raises(ValueError, match=r"ids\[0\] = -1 is out of range"):
        tok.decode([-1])
    with pytest.raises(TypeError, match=r"ids\[0\] must be an int token id, got float"):
        tok.decode([1.0])
    with pytest.raises(TypeError, match="ids must be a sequence of ints, got str"):
        tok.decode("abc")
    with pytest.raises(ValueError, match=r"ids must be 1-D, got shape \(2, 2\)"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="i = 600 is out of range"):
        tok.token_bytes(600)


def test_bad_merges_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"merge 0 = \(256, 1\) refers to id 256"):
        BPETokenizer([(256, 1)])
    with pytest.raises(ValueError, match=r"merge 0 = \(1, 261\) refers to id 261"):
        BPETokenizer([(1, 261)])
    with pytest.raises(ValueError, match="repeats an earlier merge"):
        BPETokenizer([(1, 2), (1, 2)])
    with pytest.raises(TypeError, match="merge 0 must be a pair of ints"):
        BPETokenizer([(1, 2, 3)])
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a tokenizer saved by BPETokenizer.save"):
        BPETokenizer.load(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="is not JSON"):
        BPETokenizer.load(path)
    data = BPETokenizer().to_dict()
    data["special_tokens"] = ["<pad>"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="has special_tokens"):
        BPETokenizer.load(path)
