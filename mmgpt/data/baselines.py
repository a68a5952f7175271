"""The bars a model must clear, and text to train a tokenizer on.

* :func:`majority_baseline`: per family, how often the most common answer is right. The
  answer-first sampling keeps this at chance (1/2 for yes/no, 1/3 for shapes, ...).
* :func:`text_only_baseline`: what reading the question alone earns, *without looking at
  the image*: the most common training answer for each exact question string (falling back to the
  family's most common answer for questions never seen in training), scored per family
  on the test set. It is a bar to clear, not a bound (a cleverer text model could do a
  little better); a multimodal model that does not beat it, family by family, has learned
  nothing from pixels.
* :func:`caption_corpus`: captions, questions and answers of the book's data, the
  corpus for the BPE tokenizer and a tiny language model.

The baselines read samples through ``dataset.describe(i)`` when there is one (no pixels
are drawn or loaded), else ``dataset[i]``; samples without an ``answer`` are skipped.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Dict, Iterator, List, Tuple

from .. import _checks
from .digits import DigitStringsDataset
from .shapes import ShapesDataset

__all__ = ["majority_baseline", "text_only_baseline", "caption_corpus"]


def _questions(dataset) -> Iterator[Tuple[str, str, str]]:
    """``(family, question, answer)`` for every sample with an answer."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"expected a dataset (len() and [i]), got {type(dataset).__name__}")
    get = getattr(dataset, "describe", dataset.__getitem__)
    for i in range(len(dataset)):
        sample = get(i)
        if sample.get("answer") is not None:
            yield sample.get("family") or "qa", sample["question"], sample["answer"]


def _ordered(dataset, scores: Dict[str, float]) -> Dict[str, float]:
    """The dataset's family order where it has one, else alphabetical."""
    order = list(getattr(dataset, "families", ())) + sorted(scores)
    return {f: scores[f] for f in dict.fromkeys(order) if f in scores}


def majority_baseline(dataset) -> Dict[str, float]:
    """Per family: the share of samples whose answer is the family's most common answer."""
    answers: Dict[str, Counter] = defaultdict(Counter)
    for family, _, answer in _questions(dataset):
        answers[family][answer] += 1
    return _ordered(dataset, {f: c.most_common(1)[0][1] / sum(c.values())
                              for f, c in answers.items()})


def text_only_baseline(train, test) -> Dict[str, float]:
    """Per family: test accuracy of answering from the question text alone (see above)."""
    by_question: Dict[str, Counter] = defaultdict(Counter)
    by_family: Dict[str, Counter] = defaultdict(Counter)
    for family, question, answer in _questions(train):
        by_question[question][answer] += 1
        by_family[family][answer] += 1
    guess = {q: c.most_common(1)[0][0] for q, c in by_question.items()}
    fallback = {f: c.most_common(1)[0][0] for f, c in by_family.items()}
    right: Counter = Counter()
    total: Counter = Counter()
    for family, question, answer in _questions(test):
        total[family] += 1
        right[family] += answer == guess.get(question, fallback.get(family))
    return _ordered(test, {f: right[f] / total[f] for f in total})


def caption_corpus(n: int = 20_000, seed: int = 0) -> List[str]:
    """``n`` short texts from the training splits: the caption, question and answer of
    shapes scenes (1-6 objects, one size and two sizes) and digit strings, in turn.

    Only text is made (no pixels), so this is fast and needs no scikit-learn; held-out
    colour-shape pairs never occur in it.
    """
    _checks.integer(n, "n", "caption_corpus", minimum=0)
    sources = [ShapesDataset("train", 2**39, image_size=64, num_objects=(1, 6), seed=seed),
               ShapesDataset("train", 2**39, image_size=64, num_objects=(1, 6), seed=seed,
                             two_sizes=True),
               DigitStringsDataset("train", 2**39, seed=seed)]
    pattern = (0, 0, 1, 2)  # half plain scenes, a quarter two-size scenes, a quarter digits
    texts: List[str] = []
    i = 0
    while len(texts) < n:
        sample = sources[pattern[i % 4]].describe(i)
        texts += [sample["caption"], sample["question"], sample["answer"]]
        i += 1
    return texts[:n]
