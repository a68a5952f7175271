"""Tests for ``mmgpt.data``: the book's datasets, batching and baselines.

* shapes scenes: deterministic by ``(seed, split, index)`` (same description and pixels,
  in any access order); the *meaning* is checked, not exact pixels: every question is parsed
  by an independent oracle that recomputes its answer from the ``Scene`` objects (and checks
  the 2 px no-near-tie rule); the pixel at each object's centre has its colour and no colour
  appears outside its object's box; objects fit, do not overlap and have distinct colours;
  captions list exactly the objects in reading order;
* the compositional split: train/test never contain or mention a held-out pair, every
  held-out scene contains one and one-object questions ask about it;
* answer balance: each family's answers are uniform within a 4-sigma binomial tolerance;
* the baselines on hand-made data (exact numbers) and on shapes (at chance where they must be);
* digit strings: captions and answers agree with the digits, the pixels are the source scans,
  train and test use disjoint scans;
* the folder dataset: a good folder loads; every bad-input case is named with its line,
  all bad lines are reported at once (strict) or skipped with a warning listing them;
* collate: shapes, the token layout, attention/loss masks and labels, bad input; and
  ``DataLoader(num_workers=2)`` gives the same batches as ``num_workers=0``.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import warnings
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from helpers import assert_close
from PIL import Image

from mmgpt.data import (BACKGROUND, COLORS, DEFAULT_HELDOUT, FAMILIES, IGNORE_INDEX, SHAPES,
                        Collate, DigitStringsDataset, FolderDataset, Scene, ShapeObject,
                        ShapesDataset, caption_corpus, collate, load_digit_sources,
                        make_collate, majority_baseline, render_scene, text_only_baseline)
from mmgpt.data.common import NUMBER_WORDS

CONFIGS = {
    "small": dict(image_size=32, num_objects=(1, 2)),
    "full": dict(image_size=64, num_objects=(2, 6)),
    "sizes": dict(image_size=64, num_objects=(1, 6), two_sizes=True, seed=3),
}
WORD = {w: i for i, w in enumerate(NUMBER_WORDS)}
PLURAL = {"zeros": 0, "ones": 1, "twos": 2, "threes": 3, "fours": 4, "fives": 5, "sixes": 6,
          "sevens": 7, "eights": 8, "nines": 9}
ORDINAL = {"first": 0, "second": 1, "third": 2, "fourth": 3, "last": -1}


# --------------------------------------------------------------------------------------
# An independent oracle: question text + Scene -> answer (and whether no tie was near)
# --------------------------------------------------------------------------------------

def oracle(scene: Scene, question: str):
    """Return (answer, clear): ``clear`` is False if the question relies on a near-tie."""
    objs = scene.objects
    color = {o.color: o for o in objs}
    half = scene.image_size / 2
    q = question
    if m := re.fullmatch(r"what (?:shape is|is the shape of) the (\w+) object\?", q):
        return color[m[1]].shape, True
    if m := re.fullmatch(r"what (?:color is|is the color of) the (\w+)\?", q):
        found = [o for o in objs if o.shape == m[1]]
        return (found[0].color if len(found) == 1 else None), len(found) == 1
    if q in ("how many objects are there?", "how many shapes are in the picture?"):
        return NUMBER_WORDS[len(objs)], True
    if m := re.fullmatch(r"how many (\w+)s (?:are there|are in the picture)\?", q):
        return NUMBER_WORDS[sum(o.shape == m[1] for o in objs)], True
    if m := re.fullmatch(r"is there an? (\w+) (\w+)(?: in the picture)?\?", q):
        if m[2] == "object":
            found = m[1] in color
        else:
            found = any(o.color == m[1] and o.shape == m[2] for o in objs)
        return ("yes" if found else "no"), True
    if m := re.fullmatch(r"is there an? (\w+)(?: in the picture)?\?", q):
        return ("yes" if any(o.shape == m[1] for o in objs) else "no"), True
    if m := re.fullmatch(r"is there anything (\w+)\?", q):
        return ("yes" if m[1] in color else "no"), True
    if m := re.fullmatch(r"is the (\w+) object (?:on the left or on the right|in the left half "
                         r"or the right half)\?", q):
        x = color[m[1]].x
        return ("left" if x < half else "right"), abs(x - half) >= 2
    if m := re.fullmatch(r"is the (\w+) object (?:at the top or at the bottom|in the top half "
                         r"or the bottom half)\?", q):
        y = color[m[1]].y
        return ("top" if y < half else "bottom"), abs(y - half) >= 2
    if m := re.fullmatch(r"is the (\w+) object (to the left of|to the right of|above|below) "
                         r"the (\w+) object\?", q):
        a, b = color[m[1]], color[m[3]]
        d = {"to the left of": b.x - a.x, "to the right of": a.x - b.x,
             "above": b.y - a.y, "below": a.y - b.y}[m[2]]
        return ("yes" if d > 0 else "no"), abs(d) >= 2
    if m := re.fullmatch(r"what color is the object (nearest to|closest to|farthest from) "
                         r"the (\w+) object\?", q):
        a = color[m[2]]
        dist = sorted((math.hypot(o.x - a.x, o.y - a.y), o.color) for o in objs if o is not a)
        if m[1] == "farthest from":
            dist.reverse()
        clear = len(dist) == 1 or abs(dist[0][0] - dist[1][0]) >= 2
        return dist[0][1], clear
    if m := re.fullmatch(r"are there (more|fewer) (\w+)s than (\w+)s\?", q):
        n1 = sum(o.shape == m[2] for o in objs)
        n2 = sum(o.shape == m[3] for o in objs)
        return ("yes" if (n1 > n2 if m[1] == "more" else n1 < n2) else "no"), n1 != n2
    raise AssertionError(f"the oracle cannot parse {question!r}")


def parse_caption(caption: str):
    """``"two objects: a red circle and an orange square"`` -> [("red", "circle"), ...]."""
    body = re.sub(r"^(there is |a picture of |\w+ objects?: )", "", caption)
    items = re.split(r", | and ", body)
    out = []
    for item in items:
        m = re.fullmatch(r"an? (?:(small|large) )?(\w+) (\w+)", item)
        assert m, f"cannot parse {item!r} in caption {caption!r}"
        assert item.startswith("an ") == ((m[1] or m[2])[0] in "aeiou"), f"article in {item!r}"
        out.append((m[2], m[3]))
    if m := re.match(r"(\w+) objects?: ", caption):
        assert WORD[m[1]] == len(out), caption
    return out


# --------------------------------------------------------------------------------------
# Shapes: determinism and meaning
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shapes_deterministic_and_index_addressable(name):
    kw = CONFIGS[name]
    a, b = ShapesDataset("train", 50, **kw), ShapesDataset("train", 50, **kw)
    for i in (7, 3, 49, 0, 3):  # any order, repeated
        x, y = a[i], b[i]
        assert x["scene"] == y["scene"] and x["question"] == y["question"]
        assert x["caption"] == y["caption"] and x["answer"] == y["answer"]
        assert torch.equal(x["image"], y["image"])
    assert a[-1]["scene"] == a[49]["scene"]
    other_seed = ShapesDataset("train", 50, **dict(kw, seed=kw.get("seed", 0) + 1))
    other_split = ShapesDataset("test", 50, **kw)
    for other in (other_seed, other_split):
        same = sum(a.describe(i)["scene"] == other.describe(i)["scene"] for i in range(50))
        assert same == 0


@pytest.mark.parametrize("split", ["train", "test", "heldout"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shapes_answers_agree_with_scene(name, split):
    kw = CONFIGS[name]
    ds = ShapesDataset(split, 400, **kw)
    lo, hi = ds.num_objects
    seen = set()
    for i in range(len(ds)):
        s = ds.describe(i)
        scene, objs = s["scene"], s["scene"].objects
        answer, clear = oracle(scene, s["question"])
        assert answer == s["answer"], (i, s["question"], s["answer"], answer, scene)
        assert clear, f"near-tie in sample {i}: {s['question']!r} {scene}"
        n_min = max(lo, 2) if s["family"] in ("relation", "distance") else lo
        assert n_min <= len(objs) <= hi
        assert len({o.color for o in objs}) == len(objs), "colours must be distinct"
        for o in objs:  # inside the image with a 1 px border
            assert o.x - o.radius >= 1 and o.x + o.radius <= ds.image_size - 1, o
            assert o.y - o.radius >= 1 and o.y + o.radius <= ds.image_size - 1, o
            assert o.size in (("small", "large") if ds.two_sizes else ("large",))
        for p in objs:
            for q in objs:
                if p is not q:  # boxes at least one empty pixel apart
                    assert (abs(p.x - q.x) >= p.radius + q.radius + 1
                            or abs(p.y - q.y) >= p.radius + q.radius + 1), (p, q)
        assert parse_caption(s["caption"]) == [(o.color, o.shape) for o in scene.reading_order()]
        if ds.two_sizes:
            sizes = re.findall(r"\b(small|large)\b", s["caption"])
            assert sizes == [o.size for o in scene.reading_order()]
        seen.add(s["family"])
    assert seen == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shapes_pixels_show_the_scene(name):
    ds = ShapesDataset("train", 40, **CONFIGS[name])
    for i in range(len(ds)):
        sample = ds[i]
        image, scene = sample["image"], sample["scene"]
        assert image.shape == (3, ds.image_size, ds.image_size) and image.dtype == torch.float32
        assert float(image.min()) >= 0 and float(image.max()) <= 1
        pixels = (image * 255).round().to(torch.int64)
        assert torch.equal(pixels[:, 0, 0], torch.tensor(BACKGROUND))
        for o in scene.objects:
            rgb = torch.tensor(COLORS[o.color])
            assert torch.equal(pixels[:, int(o.y), int(o.x)], rgb), (i, o)
            mask = (pixels == rgb[:, None, None]).all(0)
            rows, cols = torch.nonzero(mask, as_tuple=True)
            # this colour is drawn only inside the object's box, and fills a fair part of it
            assert rows.min() >= o.y - o.radius and rows.max() < o.y + o.radius
            assert cols.min() >= o.x - o.radius and cols.max() < o.x + o.radius
            assert len(rows) >= 0.3 * (2 * o.radius) ** 2
        assert sample["image"].is_contiguous()
        assert np.array_equal(np.asarray(ds.render(i)), pixels.permute(1, 2, 0).numpy())


def test_scene_helpers_and_reading_order():
    o = lambda c, s, x, y: ShapeObject(c, s, x, y, 3.5)  # noqa: E731
    scene = Scene(32, (o("red", "circle", 25.5, 6.5), o("blue", "square", 5.5, 8.5),
                       o("green", "triangle", 15.5, 24.5)))
    # red and blue overlap vertically: one row, read left to right; green is below
    assert [x.color for x in scene.reading_order()] == ["blue", "red", "green"]
    assert scene.find("red").shape == "circle" and scene.find("yellow") is None
    assert scene.count() == 3 and scene.count(shape="square") == 1
    assert scene.count(color="green", shape="triangle") == 1
    image = np.asarray(render_scene(scene))
    assert tuple(image[24, 15]) == COLORS["green"] and tuple(image[6, 25]) == COLORS["red"]


def test_shapes_other_properties():
    ds = ShapesDataset("train", 10, image_size=48, num_objects=1, object_size=5)
    assert len(ds) == 10 and ds.families == tuple(f for f in FAMILIES
                                                  if f not in ("relation", "distance"))
    assert all(len(ds.scene(i).objects) == 1 for i in range(10))
    assert all(o.radius == 5.5 for i in range(10) for o in ds.scene(i).objects)
    only = ShapesDataset("train", 30, num_objects=(2, 3), families=["relation"])
    assert {only.describe(i)["family"] for i in range(30)} == {"relation"}
    spaces = ShapesDataset("heldout", 1).answer_space()
    assert spaces["color"] == ("red", "green", "blue") and spaces["count"] == NUMBER_WORDS[:3]
    with pytest.raises(IndexError, match="out of range"):
        ds[10]
    with pytest.raises(IndexError, match="out of range"):
        ds[-11]
    assert ds[np.int64(2)]["caption"] == ds[2]["caption"]
    assert "ShapesDataset(split='train'" in repr(ds)


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val"), "split must be one of"),
    (dict(length=-1), "length must be"),
    (dict(seed=-3), "seed must be"),
    (dict(image_size=8), "image_size must be"),
    (dict(num_objects=(0, 2)), "num_objects must be"),
    (dict(num_objects=(3, 2)), "num_objects must be"),
    (dict(num_objects=7), "num_objects must be"),
    (dict(families=["size"]), "unknown family 'size'"),
    (dict(families=[]), "at least one family"),
    (dict(num_objects=1, families=["relation"]), "needs scenes of two or more"),
    (dict(heldout_combos=[("pink", "circle")]), "heldout_combos entries"),
    (dict(heldout_combos=[("red", s) for s in SHAPES]), "would never appear in training"),
    (dict(split="heldout", heldout_combos=()), "needs heldout_combos"),
    (dict(image_size=32, num_objects=6, object_size=6), "do not fit"),
    (dict(object_size=1), "object_size must be"),
])
def test_shapes_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ShapesDataset(**kwargs)


# --------------------------------------------------------------------------------------
# The compositional split
# --------------------------------------------------------------------------------------

def _mentions(text: str, combos) -> bool:
    return any(re.search(rf"\b{c} {s}", text) for c, s in combos)


@pytest.mark.parametrize("heldout", [DEFAULT_HELDOUT, (("yellow", "square"), ("orange", "circle"))])
def test_compositional_split(heldout):
    kw = dict(image_size=64, num_objects=(1, 6), heldout_combos=heldout)
    for split in ("train", "test"):
        ds = ShapesDataset(split, 600, **kw)
        for i in range(len(ds)):
            s = ds.describe(i)
            assert not any((o.color, o.shape) in heldout for o in s["scene"].objects), s
            assert not _mentions(s["caption"] + " " + s["question"], heldout), s
    ds = ShapesDataset("heldout", 600, **kw)
    targeted = 0
    for i in range(len(ds)):
        s = ds.describe(i)
        pairs = {(o.color, o.shape) for o in s["scene"].objects}
        assert pairs & set(heldout), f"held-out scene {i} has no held-out pair: {pairs}"
        if s["family"] in ("shape", "color"):  # the one object asked about is held out
            m = re.search(r"the (\w+) object|the (\w+)\?", s["question"])
            obj = next(o for o in s["scene"].objects if m[1] in (o.color, None) and
                       (m[2] is None or o.shape == m[2]))
            assert (obj.color, obj.shape) in heldout, s
            targeted += 1
    assert targeted > 100


# --------------------------------------------------------------------------------------
# Balance and baselines
# --------------------------------------------------------------------------------------

def _within(counts: Counter, values, what: str) -> None:
    n = sum(counts.values())
    p = 1 / len(values)
    tolerance = 4 * math.sqrt(p * (1 - p) / n)  # 4 sigma: a 60/40 split at n=500 fails
    assert set(counts) == set(values), f"{what}: answers {sorted(counts)} != {sorted(values)}"
    for value in values:
        assert abs(counts[value] / n - p) < tolerance, f"{what}: {value} {counts[value]}/{n}"


@pytest.mark.parametrize("name", ["small", "full"])
def test_answer_balance(name):
    ds = ShapesDataset("train", 4000, **CONFIGS[name])
    spaces = ds.answer_space()
    lo, hi = ds.num_objects
    answers = defaultdict(Counter)
    for i in range(len(ds)):
        s = ds.describe(i)
        key = s["family"]
        if key == "count":  # uniform per kind of count question
            key = "count objects" if re.search(r"objects|shapes", s["question"]) else "count shape"
        answers[key][s["answer"]] += 1
    for family in FAMILIES:
        if family != "count":
            _within(answers[family], spaces[family], family)
    _within(answers["count objects"], NUMBER_WORDS[lo:hi + 1], "count objects")
    _within(answers["count shape"], NUMBER_WORDS[:min(hi, 5) + 1], "count shape")


def test_baselines_exact_on_hand_made_data():
    rows = lambda spec: [dict(family=f, question=q, answer=a) for f, q, a in spec]  # noqa: E731
    train = rows([("c", "q1", "x"), ("c", "q1", "x"), ("c", "q1", "y"), ("c", "q2", "y"),
                  ("d", "q3", "yes"), ("d", "q3", "no"), ("d", "q4", "no")])
    test = rows([("c", "q1", "x"), ("c", "q2", "x"), ("c", "q9", "y"), ("c", "q9", "x"),
                 ("d", "q4", "no"), ("d", "q5", "yes")])
    assert majority_baseline(train) == {"c": 0.5, "d": 2 / 3}
    # q1 -> x (right), q2 -> y (wrong), q9 unseen -> family majority: x or y (tie: first seen, x)
    assert text_only_baseline(train, test) == {"c": 0.5, "d": 0.5}
    caption_only = [dict(caption="a cat")]
    assert majority_baseline(caption_only) == {}
    with pytest.raises(TypeError, match="expected a dataset"):
        majority_baseline(42)


def test_baselines_on_shapes_are_near_chance():
    train = ShapesDataset("train", 4000, **CONFIGS["small"])
    test = ShapesDataset("test", 2000, **CONFIGS["small"])
    majority = majority_baseline(test)
    text = text_only_baseline(train, test)
    assert list(majority) == list(train.families) == list(text)
    chance = {"shape": 1 / 3, "color": 1 / 6, "exist": 1 / 2, "position": 1 / 4,
              "relation": 1 / 2, "distance": 1 / 6, "compare": 1 / 2}
    for family, p in chance.items():
        assert abs(majority[family] - p) < 0.1, (family, majority[family])
    # from the text alone: a position question names its axis (1/2); the distance answer is
    # one of the five other colours (1/5); yes/no stays at chance
    for family, p in {"position": 0.5, "distance": 0.2, "exist": 0.5, "relation": 0.5}.items():
        assert abs(text[family] - p) < 0.1, (family, text[family])


def test_caption_corpus():
    texts = caption_corpus(300, seed=1)
    assert len(texts) == 300 and all(isinstance(t, str) and t for t in texts)
    assert texts == caption_corpus(300, seed=1) and texts != caption_corpus(300, seed=2)
    joined = " ".join(texts)
    assert "small" in joined and re.search(r"\b(two|three|four)\b \b(zero|one|two|three|four|"
                                           r"five|six|seven|eight|nine)\b", joined)
    assert not _mentions(joined, DEFAULT_HELDOUT)
    assert caption_corpus(0) == []
    with pytest.raises(ValueError, match="n must be"):
        caption_corpus(-1)


# --------------------------------------------------------------------------------------
# Digit strings
# --------------------------------------------------------------------------------------

def digit_oracle(digits, question):
    if question in ("how many digits are there?", "how many digits does the picture show?"):
        return NUMBER_WORDS[len(digits)]
    if m := re.fullmatch(r"how many (\w+) (?:are there|does the number have)\?", question):
        return NUMBER_WORDS[list(digits).count(PLURAL[m[1]])]
    if m := re.fullmatch(r"(?:what is the (\w+) digit|which digit comes (\w+))\?", question):
        return NUMBER_WORDS[digits[ORDINAL[m[1] or m[2]]]]
    raise AssertionError(f"cannot parse {question!r}")


def test_digit_strings_meaning_and_determinism():
    images, labels, ids = load_digit_sources("train")
    scans = dict(zip(ids.tolist(), images))
    label = dict(zip(ids.tolist(), labels.tolist()))
    ds = DigitStringsDataset("train", 300, seed=5)
    again = DigitStringsDataset("train", 300, seed=5)
    families = Counter()
    for i in range(len(ds)):
        s = ds[i]
        scene = s["scene"]
        assert 2 <= len(scene.digits) <= 4
        assert s["caption"] == " ".join(NUMBER_WORDS[d] for d in scene.digits)
        assert digit_oracle(scene.digits, s["question"]) == s["answer"]
        assert [label[k] for k in scene.sources] == list(scene.digits)
        assert len(set(scene.sources)) == len(scene.sources)
        assert s["image"].shape == (3, 32, 32)
        ink = 1 - s["image"][0]
        for k, source in enumerate(scene.sources):  # each cell is its scan, exactly
            x = scene.left + k * 8
            assert_close(ink[scene.top:scene.top + 8, x:x + 8].double(),
                         torch.from_numpy(np.asarray(scans[source], dtype=np.float64) / 255.0),
                         f"cell {k} of sample {i}", 1e-6)
        ink[scene.top:scene.top + 8, scene.left:scene.left + 8 * len(scene.digits)] = 0
        assert float(ink.abs().max()) < 1e-6, "ink outside the digit cells"
        assert ds.describe(i)["scene"].sources is None
        assert ds.describe(i)["question"] == s["question"]
        other = again[i]
        assert other["scene"] == scene and torch.equal(other["image"], s["image"])
        families[s["family"]] += 1
    assert set(families) == {"length", "count", "read"}
    big = DigitStringsDataset("test", 5, image_size=64, num_digits=3)
    assert big[0]["image"].shape == (3, 64, 64) and big.cell == 21


def test_digit_strings_train_and_test_use_disjoint_scans():
    train_ids = set(load_digit_sources("train")[2].tolist())
    test_ids = set(load_digit_sources("test")[2].tolist())
    assert not train_ids & test_ids and len(train_ids | test_ids) == 1797
    used = {}
    for split in ("train", "test"):
        ds = DigitStringsDataset(split, 400)
        used[split] = {k for i in range(len(ds)) for k in ds[i]["scene"].sources}
    assert used["train"] <= train_ids and used["test"] <= test_ids
    assert not used["train"] & used["test"]
    assert len(used["test"]) > 200  # many different scans, not a few repeated


def test_digit_strings_balance_and_bad_arguments():
    ds = DigitStringsDataset("train", 3000)
    answers = defaultdict(Counter)
    for i in range(len(ds)):
        s = ds.describe(i)
        answers[s["family"]][s["answer"]] += 1
    _within(answers["length"], NUMBER_WORDS[2:5], "length")
    _within(answers["count"], NUMBER_WORDS[0:5], "count")
    _within(answers["read"], NUMBER_WORDS[0:10], "read")
    for kwargs, match in [(dict(split="heldout"), "split must be"),
                          (dict(num_digits=(2, 5)), "num_digits must be"),
                          (dict(image_size=24), "image_size must be"),
                          (dict(families=["sum"]), "unknown family")]:
        with pytest.raises(ValueError, match=match):
            DigitStringsDataset(**kwargs)


# --------------------------------------------------------------------------------------
# Bring your own folder
# --------------------------------------------------------------------------------------

def _png(path, size=(10, 8), color=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _index(root, lines, name="index.jsonl"):
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    (root / name).write_text(text, encoding="utf-8")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    _png(root / "a.png")
    _png(root / "sub" / "b.png", size=(6, 6), color=(0, 0, 255))
    _png(root / "gray.png", size=(10, 8), color=128, mode="L")
    _png(root / "clear.png", size=(4, 4), color=(0, 0, 0, 0), mode="RGBA")
    (root / "broken.png").write_bytes(b"this is not an image")
    good = (root / "a.png").read_bytes()
    (root / "cut.png").write_bytes(good[:len(good) // 2])
    _png(tmp_path / "outside.png")
    return root


def test_folder_dataset_loads_a_good_folder(folder):
    _index(folder, [
        {"image": "a.png", "caption": "a red picture"},
        "",
        {"image": "sub/b.png", "question": "what colour?", "answer": "blue", "family": "color",
         "extra": 1},
        {"image": "gray.png", "caption": "grey", "question": "is it grey?", "answer": "yes"},
        {"image": "clear.png", "caption": "nothing"},
    ])
    ds = FolderDataset(folder)
    assert len(ds) == 4 and not ds.skipped
    first = ds[0]
    assert first["caption"] == "a red picture" and first["line"] == 1 and first["path"] == "a.png"
    assert first["image"].shape == (3, 8, 10)
    assert_close(first["image"][:, 0, 0], torch.tensor([200, 30, 30]) / 255, "a red pixel", 1e-6)
    assert ds[1]["family"] == "color" and ds[1]["line"] == 3 and "caption" not in ds[1]
    assert ds[2]["family"] == "qa"
    assert_close(ds[2]["image"], torch.full((3, 8, 10), 128 / 255), "grey -> RGB", 1e-6)
    assert torch.equal(ds[3]["image"], torch.ones(3, 4, 4))  # transparent -> white paper
    assert "image" not in ds.describe(1) and ds.describe(1)["answer"] == "blue"
    resized = FolderDataset(folder, image_size=16)
    assert {tuple(resized[i]["image"].shape) for i in range(4)} == {(3, 16, 16)}
    assert majority_baseline(ds) == {"color": 1.0, "qa": 1.0}


BAD_LINES = [  # (line, the problem reported for it: a regular expression)
    ('{"image": "a.png", "caption": ', r"not valid JSON \(Expecting value at column 31\)"),
    ('["a.png", "caption"]', "expected a JSON object, got list"),
    ({"caption": "no image"}, "missing field 'image'"),
    ({"image": "a.png"}, "needs a 'caption' or a 'question' and an 'answer'"),
    ({"image": "a.png", "question": "what?"}, "has 'question' but no 'answer'"),
    ({"image": "a.png", "answer": "red"}, "has 'answer' but no 'question'"),
    ({"image": "a.png", "caption": 7}, "field 'caption' must be a non-empty string, got 7"),
    ({"image": "a.png", "caption": " "}, "field 'caption' must be a non-empty string"),
    ({"image": "../outside.png", "caption": "x"},
     r"image path '\.\./outside\.png' leads outside the folder '.*'; refused"),
    ({"image": "ABSOLUTE", "caption": "x"}, r"image path '/.*/a\.png' leads outside the folder"),
    ({"image": "link.png", "caption": "x"}, r"image path 'link\.png' leads outside the folder"),
    ({"image": "missing.png", "caption": "x"}, "image file 'missing.png' does not exist"),
    ({"image": "broken.png", "caption": "x"}, "image 'broken.png' cannot be read"),
    ({"image": "cut.png", "caption": "x"}, "image 'cut.png' cannot be read"),
    ({"image": "sub", "caption": "x"}, "image file 'sub' does not exist"),
]


def _bad(folder, line):
    if isinstance(line, dict) and line.get("image") == "ABSOLUTE":
        line = dict(line, image=str((folder / "a.png").resolve()))
    if isinstance(line, dict) and line.get("image") == "link.png" and not (folder / "link.png").exists():
        os.symlink(folder.parent / "outside.png", folder / "link.png")
    return line


@pytest.mark.parametrize("line, problem", BAD_LINES, ids=[f"line{k}" for k in range(len(BAD_LINES))])
def test_folder_dataset_names_each_bad_line(folder, line, problem):
    good = {"image": "a.png", "caption": "fine"}
    _index(folder, [good, _bad(folder, line), good])
    with pytest.raises(ValueError, match=r"1 bad line\(s\)") as info:
        FolderDataset(folder)
    assert re.search(rf"\n  index\.jsonl:2: {problem}", str(info.value))
    with pytest.warns(UserWarning, match=r"skipped 1 bad line\(s\).*kept 2") as record:
        ds = FolderDataset(folder, strict=False)
    assert re.search(rf"\n  index\.jsonl:2: {problem}", str(record[0].message))
    assert len(ds) == 2 and [ds[i]["line"] for i in range(2)] == [1, 3]
    assert ds.skipped[0][0] == 2


def test_folder_dataset_reports_every_bad_line_at_once(folder):
    lines = [{"image": "a.png", "caption": "fine"}] + [_bad(folder, x) for x, _ in BAD_LINES]
    _index(folder, lines)
    with pytest.raises(ValueError) as info:
        FolderDataset(folder)
    message = str(info.value)
    assert f"{len(BAD_LINES)} bad line(s)" in message
    for k, (_, problem) in enumerate(BAD_LINES):
        assert re.search(rf"\n  index\.jsonl:{k + 2}: {problem}", message), problem
    with pytest.warns(UserWarning, match=f"skipped {len(BAD_LINES)} bad line"):
        assert len(FolderDataset(folder, strict=False)) == 1


def test_folder_dataset_empty_and_missing(folder, tmp_path):
    (folder / "index.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="has no usable samples.*empty"):
        FolderDataset(folder)
    (folder / "index.jsonl").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no usable samples"):
        FolderDataset(folder, strict=False)
    _index(folder, [{"image": "missing.png", "caption": "x"}])
    with pytest.raises(ValueError, match=r"lines are all bad:\n  index.jsonl:1: image file"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            FolderDataset(folder, strict=False)
    with pytest.raises(FileNotFoundError, match="index file .*other.jsonl' does not exist"):
        FolderDataset(folder, "other.jsonl")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        FolderDataset(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="root must be a path"):
        FolderDataset(3)
    _index(folder, [{"image": "a.png", "caption": "x"}])
    with pytest.raises(ValueError, match="image_size must be"):
        FolderDataset(folder, image_size=0)


def test_folder_dataset_late_image_errors_name_the_line(folder):
    _index(folder, [{"image": "a.png", "caption": "x"}, {"image": "broken.png", "caption": "y"}])
    ds = FolderDataset(folder, check_images=False)
    assert len(ds) == 2 and ds[0]["caption"] == "x"
    with pytest.raises(ValueError, match=r"index.jsonl:2: image 'broken.png' cannot be read"):
        ds[1]


# --------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------

class ByteTokenizer:
    """A byte-level stand-in with the agreed tokenizer interface: ids 0-4 are special."""

    pad_id, bos_id, eos_id, image_id, sep_id = range(5)

    def encode(self, text, *, bos=False, eos=False):
        return [b + 5 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 5 for i in ids if i >= 5).decode("utf-8")


def _check_batch(batch, samples, tok, task="qa", image_tokens=1):
    B = len(samples)
    ids, att, loss = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    T = ids.shape[1]
    assert ids.dtype == torch.long and att.dtype == torch.bool and loss.dtype == torch.bool
    assert ids.shape == att.shape == loss.shape == batch["labels"].shape == (B, T)
    assert batch["images"].shape == (B,) + tuple(samples[0]["image"].shape)
    for b, s in enumerate(samples):
        n, p = int(batch["lengths"][b]), int(batch["prompt_lengths"][b])
        row = ids[b].tolist()
        kind = task if task != "auto" else ("qa" if "question" in s else "caption")
        head = [tok.bos_id] + [tok.image_id] * image_tokens
        if kind == "qa":
            prompt = head + tok.encode(s["question"]) + [tok.sep_id]
            target = tok.encode(s["answer"])
        else:
            prompt, target = head + [tok.sep_id], tok.encode(s["caption"])
        assert row[:n] == prompt + target + [tok.eos_id] and p == len(prompt)
        assert row[n:] == [tok.pad_id] * (T - n)
        assert att[b].tolist() == [True] * n + [False] * (T - n)
        assert loss[b].tolist() == [False] * p + [True] * (n - p) + [False] * (T - n)
        assert batch["labels"][b].tolist() == [IGNORE_INDEX] * p + row[p:n] + [IGNORE_INDEX] * (T - n)
        assert torch.equal(batch["images"][b], s["image"])
    assert T == max(int(x) for x in batch["lengths"])


def test_collate_layout_and_masks():
    tok = ByteTokenizer()
    samples = [ShapesDataset("train", 8)[i] for i in range(8)]
    batch = collate(samples, tok)
    _check_batch(batch, samples, tok)
    assert batch["answer"] == [s["answer"] for s in samples] and batch["family"][0] == samples[0]["family"]
    _check_batch(collate(samples, tok, task="caption"), samples, tok, task="caption")
    _check_batch(make_collate(tok, image_tokens=4)(samples), samples, tok, image_tokens=4)
    mixed = [dict(image=samples[0]["image"], caption="a b"), samples[1]]
    batch = collate(mixed, tok, task="auto")
    _check_batch(batch, mixed, tok, task="auto")
    assert batch["question"] == [None, samples[1]["question"]]
    # the loss sees exactly the answer tokens and <eos>, after the usual shift
    batch = collate(samples[:1], tok)
    targets = batch["labels"][0, 1:]
    kept = targets[targets != IGNORE_INDEX].tolist()
    assert kept == tok.encode(samples[0]["answer"]) + [tok.eos_id]


def test_collate_with_the_real_tokenizer():
    from mmgpt.tokenizer import BPETokenizer

    tok = BPETokenizer.train(caption_corpus(600), vocab_size=300)
    samples = [ShapesDataset("test", 6)[i] for i in range(6)]
    batch = collate(samples, tok)
    _check_batch(batch, samples, tok)
    for b, s in enumerate(samples):
        answer = batch["input_ids"][b][batch["loss_mask"][b]].tolist()
        assert answer[-1] == tok.eos_id and tok.decode(answer[:-1]) == s["answer"]


def test_collate_bad_input():
    tok = ByteTokenizer()
    ds = ShapesDataset("train", 4)
    samples = [ds[0], ds[1]]
    with pytest.raises(TypeError, match="ByteTokenizer lacks|lacks sep_id"):
        Collate(type("NoSep", (), dict(encode=None, pad_id=0, bos_id=1, eos_id=2, image_id=3))())
    with pytest.raises(ValueError, match="task must be one of"):
        Collate(tok, task="vqa")
    with pytest.raises(ValueError, match="image_tokens must be"):
        Collate(tok, image_tokens=-1)
    with pytest.raises(ValueError, match="non-empty list"):
        collate([], tok)
    with pytest.raises(ValueError, match="sample 1 of the batch has no 'question'"):
        collate([samples[0], dict(image=samples[0]["image"], caption="x")], tok)
    with pytest.raises(ValueError, match="more than max_length=5"):
        collate(samples, tok, max_length=5)
    with pytest.raises(ValueError, match=r"share one shape, got \[\(3, 32, 32\), \(3, 64, 64\)\]"):
        collate([samples[0], ShapesDataset("train", 1, image_size=64)[0]], tok)
    with pytest.raises(ValueError, match="needs an 'image' tensor"):
        collate([dict(samples[0], image=None)], tok)


def test_dataloader_workers_give_the_same_batches():
    ds = ShapesDataset("train", 48, **CONFIGS["full"])
    fn = make_collate(ByteTokenizer())
    assert pickle.loads(pickle.dumps(fn)).task == "qa"
    loaders = [torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=fn, num_workers=w)
               for w in (0, 2)]
    batches = [list(loader) for loader in loaders]
    assert len(batches[0]) == len(batches[1]) == 3
    for one, two in zip(*batches):
        assert one.keys() == two.keys()
        for key, value in one.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, two[key]), key
            else:
                assert value == two[key], key


# --------------------------------------------------------------------------------------
# color_prior: a biased data set (Chapter 12)
# --------------------------------------------------------------------------------------

def test_color_prior_off_or_zero_changes_nothing():
    kw = dict(families=("shape", "color", "count"))
    plain = ShapesDataset("train", 60, **kw)
    for prior in (None, ("circle", "blue", 0.0)):
        other = ShapesDataset("train", 60, color_prior=prior, **kw)
        assert all(plain.describe(i) == other.describe(i) for i in range(60))
    assert "color_prior" not in repr(plain)
    assert "color_prior=('circle', 'blue', 0.9)" in repr(
        ShapesDataset("train", 1, color_prior=("circle", "blue", 0.9)))


def test_color_prior_makes_the_shape_nearly_always_that_colour():
    kw = dict(families=("shape", "color", "count"), num_objects=(1, 2))
    n = 1500
    biased = ShapesDataset("train", n, color_prior=("circle", "blue", 0.98), **kw)
    plain = ShapesDataset("train", n, **kw)

    def blue_share(ds):
        colours = [o.color for i in range(n) for o in ds.scene(i).objects if o.shape == "circle"]
        return sum(c == "blue" for c in colours) / len(colours)

    assert blue_share(plain) < 0.35  # five colours can be a circle's in "train"
    assert blue_share(biased) > 0.9
    # deterministic, and every sample still answers its own question right
    again = ShapesDataset("train", n, color_prior=("circle", "blue", 0.98), **kw)
    for i in range(0, n, 37):
        s = biased.describe(i)
        assert s == again.describe(i)
        if s["family"] == "color":
            shape = s["question"].rstrip("?").split()[-1]
            assert next(o for o in s["scene"].objects if o.shape == shape).color == s["answer"]


@pytest.mark.parametrize("prior, match", [
    (("circle", "blue"), "color_prior must be None or"),
    (("hexagon", "blue", 0.5), "color_prior must be None or"),
    (("circle", "pink", 0.5), "color_prior must be None or"),
    (("circle", "blue", 1.5), "color_prior must be None or"),
    (("circle", "blue", True), "color_prior must be None or"),
    (("circle", "red", 0.5), "held-out pair"),
])
def test_color_prior_rejects_bad_values(prior, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset("train", 10, color_prior=prior)


@pytest.mark.parametrize("make, match", [
    (lambda: ShapesDataset(seed=True), "seed must be an int in 0..4294967295, got True"),
    (lambda: ShapesDataset(length=2**40), "length must be an int in 0..1099511627775"),
    (lambda: ShapesDataset(object_size=2.5), "object_size must be an int >= 2"),
    (lambda: DigitStringsDataset(length=True), "length must be an int"),
    (lambda: DigitStringsDataset(image_size=31), "image_size must be an int >= 32, got 31"),
    (lambda: load_digit_sources("heldout"), "split must be one of"),
    (lambda: caption_corpus(n=-1), "n must be an int >= 0"),
    (lambda: make_collate(ByteTokenizer(), max_length=0), "max_length must be a positive int"),
    (lambda: make_collate(ByteTokenizer(), image_tokens=True), "image_tokens must be an int"),
])
def test_dataset_arguments_refuse_bools_and_name_the_bound(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_collate_labels_use_the_loss_ignore_index():
    from mmgpt import loss

    assert IGNORE_INDEX is loss.IGNORE_INDEX
