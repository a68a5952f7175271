"""Shapes scenes: coloured circles, squares and triangles, with captions and questions.

In the spirit of Sort-of-CLEVR: a few non-overlapping objects on a plain background, each
in a different one of six colours (so "the red object" is never ambiguous), drawn with PIL.
Every sample has a caption (the objects in reading order) and one question with a one-word
answer from one of eight *families*:

==========  ====================================================  ========================
family      example question                                      answers
==========  ====================================================  ========================
shape       what shape is the red object?                         circle, square, triangle
color       what color is the square?                             the six colours
count       how many circles are there?                           zero .. six
exist       is there a blue triangle?                             yes, no
position    is the green object on the left or on the right?      left, right, top, bottom
relation    is the red object above the blue object?              yes, no
distance    what color is the object nearest to the red object?   the six colours
compare     are there more circles than squares?                  yes, no
==========  ====================================================  ========================

Two rules keep the questions honest:

* **answer first**: each sample picks its answer uniformly, then builds a scene and a
  question with that answer, so guessing stays at chance (left alone, "is there a ...?"
  is "no" four times in five). ``count`` first picks what to count (all objects or one
  shape) and then the number uniformly from what that question allows;
* **no near-ties**: an object asked about by position is at least 2 px from the midline,
  two objects compared by position differ by at least 2 px along that axis, and the
  nearest (farthest) object is at least 2 px nearer (farther) than the runner-up.

**The compositional split** (in the spirit of CLEVR-CoGenT): the colour-shape pairs in
``heldout_combos`` never appear in ``"train"`` or ``"test"`` scenes, questions or captions.
Every ``"heldout"`` scene holds at least one of them, and questions that name one object
("what shape is the red object?") ask about a held-out one. A model that learned "red"
and "circle" separately answers them; one that memorised pairs does not.

Everything is a pure function of ``(seed, split, index)`` (see :mod:`mmgpt.data.common`),
so ``ds[i]`` is instant, reproducible and the same in every DataLoader worker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from .. import _checks
from .common import (MAX_LENGTH, MAX_SEED, NUMBER_WORDS, SPLITS, Rng, check_families,
                     check_index, check_range, sample_seed)

__all__ = ["COLORS", "SHAPES", "BACKGROUND", "FAMILIES", "DEFAULT_HELDOUT", "ShapeObject",
           "Scene", "render_scene", "ShapesDataset"]

COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (235, 195, 0),
    "purple": (150, 60, 190),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (245, 245, 245)
FAMILIES = ("shape", "color", "count", "exist", "position", "relation", "distance", "compare")
# One pair per shape and per colour among the first three: every shape and every colour
# still appears in training, only these pairings do not.
DEFAULT_HELDOUT = (("red", "circle"), ("green", "square"), ("blue", "triangle"))

MARGIN = 2  # pixels: the smallest difference a position or distance question relies on
_TAG = 1  # this dataset's tag in the per-sample seed
_PRIOR_TAG = 1 << 20  # tags of the redraws (and their coin flips) under ``color_prior``
_PRIOR_TRIES = 1000

Combo = Tuple[str, str]


# --------------------------------------------------------------------------------------
# A scene: what is where
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShapeObject:
    """One object. ``x, y`` is its centre in pixels (pixel ``j`` covers ``[j, j+1)``, so
    the centre pixel is ``(int(x), int(y))``); it fits in the square ``x ± radius``."""

    color: str
    shape: str
    x: float
    y: float
    radius: float
    size: str = "large"

    @property
    def rgb(self) -> Tuple[int, int, int]:
        return COLORS[self.color]


@dataclass(frozen=True)
class Scene:
    """The objects of one image (in drawing order) and the image's side in pixels."""

    image_size: int
    objects: Tuple[ShapeObject, ...]

    def find(self, color: str) -> Optional[ShapeObject]:
        """The object of that colour, or ``None``."""
        return next((o for o in self.objects if o.color == color), None)

    def count(self, shape: Optional[str] = None, color: Optional[str] = None) -> int:
        return sum((shape is None or o.shape == shape) and (color is None or o.color == color)
                   for o in self.objects)

    def reading_order(self) -> Tuple[ShapeObject, ...]:
        """Row by row from the top, left to right in each row. An object joins a row when
        it overlaps the row's first object vertically."""
        rows: List[List[ShapeObject]] = []
        for o in sorted(self.objects, key=lambda o: (o.y, o.x)):
            if rows and o.y - rows[-1][0].y < rows[-1][0].radius + o.radius:
                rows[-1].append(o)
            else:
                rows.append([o])
        return tuple(o for row in rows for o in sorted(row, key=lambda o: o.x))


def render_scene(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB PIL image: flat colours, no anti-aliasing, so the pixel at
    each object's centre has exactly that object's colour."""
    size = scene.image_size
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        cx, cy, r = int(o.x), int(o.y), int(o.radius)
        box = (cx - r, cy - r, cx + r, cy + r)
        if o.shape == "circle":
            draw.ellipse(box, fill=o.rgb)
        elif o.shape == "square":
            draw.rectangle(box, fill=o.rgb)
        else:  # triangle, apex up
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=o.rgb)
    return image


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array))


# --------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------

_SHAPE_Q = ("what shape is the {c} object?", "what is the shape of the {c} object?")
_COLOR_Q = ("what color is the {s}?", "what is the color of the {s}?")
_COUNT_ALL_Q = ("how many objects are there?", "how many shapes are in the picture?")
_COUNT_SHAPE_Q = ("how many {s}s are there?", "how many {s}s are in the picture?")
_EXIST_Q = {
    "combo": ("is there {ac} {s}?", "is there {ac} {s} in the picture?"),
    "shape": ("is there a {s}?", "is there a {s} in the picture?"),
    "color": ("is there {ac} object?", "is there anything {c}?"),
}
_POSITION_Q = {
    "x": ("is the {c} object on the left or on the right?",
          "is the {c} object in the left half or the right half?"),
    "y": ("is the {c} object at the top or at the bottom?",
          "is the {c} object in the top half or the bottom half?"),
}
_RELATION_Q = {
    "left": "is the {a} object to the left of the {b} object?",
    "right": "is the {a} object to the right of the {b} object?",
    "above": "is the {a} object above the {b} object?",
    "below": "is the {a} object below the {b} object?",
}
_DISTANCE_Q = {
    "nearest": ("what color is the object nearest to the {c} object?",
                "what color is the object closest to the {c} object?"),
    "farthest": ("what color is the object farthest from the {c} object?",),
}
_COMPARE_Q = {"more": "are there more {s1}s than {s2}s?",
              "fewer": "are there fewer {s1}s than {s2}s?"}
_CAPTIONS = ("{list}", "there is {list}", "a picture of {list}", "{n} {objects}: {list}")


def _caption(rng: Rng, scene: Scene, sizes: bool) -> str:
    names = [_a(f"{o.size + ' ' if sizes else ''}{o.color} {o.shape}")
             for o in scene.reading_order()]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    n = len(names)
    return rng.choice(_CAPTIONS).format(list=listed, n=NUMBER_WORDS[n],
                                        objects="object" if n == 1 else "objects")


def _a(words: str) -> str:
    """"a red circle", "an orange square"."""
    return ("an " if words[0] in "aeiou" else "a ") + words


# --------------------------------------------------------------------------------------
# Sampling: attributes first, then positions, then which attribute goes where
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Config:
    split: str
    image_size: int
    lo: int
    hi: int
    radius: int
    small_radius: Optional[int]  # None: one size only
    allowed: Dict[str, Tuple[str, ...]]  # colour -> shapes it may have in this split
    focus: Tuple[Combo, ...]  # pairs a question about one object may target
    heldout: frozenset


Slot = Tuple[int, int, int, str]  # centre pixel column, row, half-side r, size name


def _fill(rng: Rng, cfg: _Config, attrs: List[Combo], n: int, *, avoid_shape=None,
          avoid_color=None, avoid_combo=None) -> Optional[List[Combo]]:
    """Add objects in unused colours (random allowed shapes) until there are ``n``."""
    used = {c for c, _ in attrs}
    colors = [c for c in COLORS if c not in used and c != avoid_color]
    rng.shuffle(colors)
    attrs = list(attrs)
    for c in colors:
        if len(attrs) >= n:
            break
        shapes = [s for s in cfg.allowed[c] if s != avoid_shape and (c, s) != avoid_combo]
        if shapes:
            attrs.append((c, rng.choice(shapes)))
    return attrs if len(attrs) == n else None


def _heldout_ok(cfg: _Config, attrs: Sequence[Combo]) -> bool:
    """A held-out scene must hold at least one held-out pair."""
    return cfg.split != "heldout" or any(a in cfg.heldout for a in attrs)


def _retry(make, tries: int = 200):
    for _ in range(tries):
        out = make()
        if out is not None:
            return out
    return None


def _place(rng: Rng, cfg: _Config, n: int) -> Optional[List[Slot]]:
    """``n`` non-overlapping squares (at least 1 px apart and from the border), random
    sizes if two sizes are on; returned in random order."""
    size = cfg.image_size
    if cfg.small_radius is None:
        wanted = [(cfg.radius, "large")] * n
    else:
        wanted = [rng.choice(((cfg.radius, "large"), (cfg.small_radius, "small")))
                  for _ in range(n)]
    wanted.sort(key=lambda w: -w[0])  # the big ones first: they are the hardest to fit
    for _ in range(100):
        placed: List[Slot] = []
        for r, name in wanted:
            for _ in range(30):
                cx = rng.integers(r + 1, size - 2 - r)
                cy = rng.integers(r + 1, size - 2 - r)
                if all(abs(cx - px) >= r + pr + 2 or abs(cy - py) >= r + pr + 2
                       for px, py, pr, _ in placed):
                    placed.append((cx, cy, r, name))
                    break
            else:
                break
        if len(placed) == n:
            rng.shuffle(placed)
            return placed
    return None


def _assemble(attrs: Sequence[Combo], slots: Sequence[Slot],
              pinned: Optional[Dict[int, int]] = None) -> Tuple[ShapeObject, ...]:
    """Put attribute ``a`` on slot ``pinned[a]``; the others on the free slots in order."""
    pinned = pinned or {}
    free = iter(k for k in range(len(slots)) if k not in pinned.values())
    objects = []
    for a, (color, shape) in enumerate(attrs):
        cx, cy, r, size = slots[pinned[a] if a in pinned else next(free)]
        objects.append(ShapeObject(color, shape, cx + 0.5, cy + 0.5, r + 0.5, size))
    return tuple(objects)


def _done(rng: Rng, cfg: _Config, attrs: Optional[List[Combo]], question: str, answer: str):
    """Place the objects anywhere: (objects, question, answer), or None to try again."""
    slots = None if attrs is None else _place(rng, cfg, len(attrs))
    return None if slots is None else (_assemble(attrs, slots), question, answer)


def _focus_index(rng: Rng, cfg: _Config, attrs: Sequence[Combo]) -> int:
    """The object a question is about: a held-out one in the held-out split."""
    return rng.choice([i for i, a in enumerate(attrs) if a in cfg.focus])


def _number_of_objects(rng: Rng, cfg: _Config, at_least: int = 1) -> int:
    return rng.integers(max(cfg.lo, at_least), cfg.hi)


def _ask_shape(rng: Rng, cfg: _Config):
    answer = rng.choice(sorted({s for _, s in cfg.focus}, key=SHAPES.index))
    color = rng.choice([c for c, s in cfg.focus if s == answer])
    attrs = _fill(rng, cfg, [(color, answer)], _number_of_objects(rng, cfg))
    question = rng.choice(_SHAPE_Q).format(c=color)
    return _done(rng, cfg, attrs, question, answer)


def _ask_color(rng: Rng, cfg: _Config):
    answer = rng.choice([c for c in COLORS if any(fc == c for fc, _ in cfg.focus)])
    shape = rng.choice([s for c, s in cfg.focus if c == answer])
    # every other object has another shape, so "the <shape>" names exactly one object
    attrs = _fill(rng, cfg, [(answer, shape)], _number_of_objects(rng, cfg), avoid_shape=shape)
    question = rng.choice(_COLOR_Q).format(s=shape)
    return _done(rng, cfg, attrs, question, answer)


def _ask_count(rng: Rng, cfg: _Config):
    if rng.random() < 0.5:  # how many objects?
        n = _number_of_objects(rng, cfg)
        question = rng.choice(_COUNT_ALL_Q)
        attrs = _retry(lambda: _keep(_fill(rng, cfg, [], n), cfg))
        return _done(rng, cfg, attrs, question, NUMBER_WORDS[n])
    shape = rng.choice(SHAPES)
    colors = [c for c in COLORS if shape in cfg.allowed[c]]
    k = rng.integers(0, min(cfg.hi, len(colors)))
    n = _number_of_objects(rng, cfg, at_least=k)
    question = rng.choice(_COUNT_SHAPE_Q).format(s=shape)

    def make():
        attrs = [(c, shape) for c in rng.sample(colors, k)]
        return _keep(_fill(rng, cfg, attrs, n, avoid_shape=shape), cfg)

    attrs = _retry(make)
    return _done(rng, cfg, attrs, question, NUMBER_WORDS[k])


def _keep(attrs: Optional[List[Combo]], cfg: _Config) -> Optional[List[Combo]]:
    return attrs if attrs is not None and _heldout_ok(cfg, attrs) else None


def _ask_exist(rng: Rng, cfg: _Config):
    kind = rng.choice(("combo", "shape", "color"))
    yes = rng.random() < 0.5
    if kind == "color" and not yes and cfg.lo == len(COLORS):
        kind = rng.choice(("combo", "shape"))  # six objects show every colour
    # with six objects every colour is there: a missing colour needs five or fewer
    most = len(COLORS) - 1 if kind == "color" and not yes else cfg.hi
    n = rng.integers(cfg.lo, min(cfg.hi, most))
    color, shape = rng.choice(cfg.focus)  # never a held-out pair outside "heldout"

    def make():
        if kind == "combo":
            if yes:
                return _keep(_fill(rng, cfg, [(color, shape)], n), cfg)
            start: List[Combo] = []
            if n >= 2 and rng.random() < 0.5:  # both words present, on different objects
                others = [s for s in cfg.allowed[color] if s != shape]
                mates = [c for c in COLORS if c != color and shape in cfg.allowed[c]]
                if others and mates:
                    start = [(color, rng.choice(others)), (rng.choice(mates), shape)]
            return _keep(_fill(rng, cfg, start, n, avoid_combo=(color, shape)), cfg)
        if kind == "shape":
            if yes:
                c = rng.choice([c for c in COLORS if shape in cfg.allowed[c]])
                return _keep(_fill(rng, cfg, [(c, shape)], n), cfg)
            return _keep(_fill(rng, cfg, [], n, avoid_shape=shape), cfg)
        if yes:
            return _keep(_fill(rng, cfg, [(color, rng.choice(cfg.allowed[color]))], n), cfg)
        return _keep(_fill(rng, cfg, [], n, avoid_color=color), cfg)

    attrs = _retry(make)
    question = rng.choice(_EXIST_Q[kind]).format(c=color, ac=_a(color), s=shape)
    return _done(rng, cfg, attrs, question, "yes" if yes else "no")


def _ask_position(rng: Rng, cfg: _Config):
    answer = rng.choice(("left", "right", "top", "bottom"))
    axis = 0 if answer in ("left", "right") else 1
    low_half = answer in ("left", "top")
    attrs = _retry(lambda: _keep(_fill(rng, cfg, [], _number_of_objects(rng, cfg)), cfg))
    if attrs is None:
        return None
    focus = _focus_index(rng, cfg, attrs)
    middle = cfg.image_size / 2

    def make():
        slots = _place(rng, cfg, len(attrs))
        if slots is None:
            return None
        centre = [slot[axis] + 0.5 for slot in slots]
        ok = [k for k, c in enumerate(centre)
              if abs(c - middle) >= MARGIN and (c < middle) == low_half]
        return _assemble(attrs, slots, {focus: rng.choice(ok)}) if ok else None

    question = rng.choice(_POSITION_Q["xy"[axis]]).format(c=attrs[focus][0])
    objects = _retry(make)
    return objects and (objects, question, answer)


def _ask_relation(rng: Rng, cfg: _Config):
    relation = rng.choice(tuple(_RELATION_Q))
    yes = rng.random() < 0.5
    attrs = _retry(lambda: _keep(_fill(rng, cfg, [], _number_of_objects(rng, cfg, 2)), cfg))
    if attrs is None:
        return None
    a = _focus_index(rng, cfg, attrs)
    b = rng.choice([i for i in range(len(attrs)) if i != a])
    axis = 0 if relation in ("left", "right") else 1
    sign = -1 if relation in ("left", "above") else 1  # "a left of b": x_a - x_b < 0

    def make():
        slots = _place(rng, cfg, len(attrs))
        if slots is None:
            return None
        # signed gap along the axis, positive when "a <relation> b" holds
        gap = lambda p, q: sign * (slots[p][axis] - slots[q][axis])  # noqa: E731
        pairs = [(p, q) for p in range(len(slots)) for q in range(len(slots)) if p != q
                 and (gap(p, q) >= MARGIN if yes else gap(p, q) <= -MARGIN)]
        if not pairs:
            return None
        p, q = rng.choice(pairs)
        return _assemble(attrs, slots, {a: p, b: q})

    question = _RELATION_Q[relation].format(a=attrs[a][0], b=attrs[b][0])
    objects = _retry(make)
    return objects and (objects, question, "yes" if yes else "no")


def _ask_distance(rng: Rng, cfg: _Config):
    which = rng.choice(("nearest", "farthest"))
    answer = rng.choice(tuple(COLORS))
    n = _number_of_objects(rng, cfg, 2)
    focus_pairs = [fc for fc in cfg.focus if fc[0] != answer]
    if not focus_pairs:
        return None

    def make_attrs():
        focus = rng.choice(focus_pairs)
        target = (answer, rng.choice(cfg.allowed[answer]))
        return _keep(_fill(rng, cfg, [focus, target], n), cfg)

    attrs = _retry(make_attrs)
    if attrs is None:
        return None

    def make():
        slots = _place(rng, cfg, n)
        if slots is None:
            return None
        options = []
        for p in range(n):
            d = sorted((math.hypot(slots[p][0] - slots[q][0], slots[p][1] - slots[q][1]), q)
                       for q in range(n) if q != p)
            if which == "farthest":
                d.reverse()
            if len(d) == 1 or abs(d[0][0] - d[1][0]) >= MARGIN:
                options.append((p, d[0][1]))
        if not options:
            return None
        p, q = rng.choice(options)
        return _assemble(attrs, slots, {0: p, 1: q})

    question = rng.choice(_DISTANCE_Q[which]).format(c=attrs[0][0])
    objects = _retry(make)
    return objects and (objects, question, answer)


def _ask_compare(rng: Rng, cfg: _Config):
    which = rng.choice(("more", "fewer"))
    s1, s2 = rng.sample(SHAPES, 2)
    yes = rng.random() < 0.5
    n = _number_of_objects(rng, cfg)

    def make():  # rejection on attributes only (cheap); equal counts are never asked
        attrs = _keep(_fill(rng, cfg, [], n), cfg)
        if attrs is None:
            return None
        diff = sum(s == s1 for _, s in attrs) - sum(s == s2 for _, s in attrs)
        if diff == 0 or (diff > 0) != (yes == (which == "more")):
            return None
        return attrs

    attrs = _retry(make, tries=1000)
    question = _COMPARE_Q[which].format(s1=s1, s2=s2)
    return _done(rng, cfg, attrs, question, "yes" if yes else "no")


_ASK = {"shape": _ask_shape, "color": _ask_color, "count": _ask_count, "exist": _ask_exist,
        "position": _ask_position, "relation": _ask_relation, "distance": _ask_distance,
        "compare": _ask_compare}
_NEEDS_TWO = ("relation", "distance")


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------

class ShapesDataset:
    """Shapes scenes with a caption and a question each: ``ds[i]`` is a dict with
    ``image`` (float tensor ``(3, image_size, image_size)`` in ``[0, 1]``), ``caption``,
    ``question``, ``answer``, ``family`` and ``scene`` (a :class:`Scene`).

    Args:
        split: ``"train"``, ``"test"`` (same distribution, other samples) or ``"heldout"``
            (scenes with the held-out colour-shape pairs).
        length: how many samples ``len(ds)`` says there are; any index below it works.
        image_size: side of the square image in pixels (at least 16).
        num_objects: objects per scene, an int or an inclusive ``(min, max)`` within 1..6.
            ``relation`` and ``distance`` questions always use at least two.
        seed: the dataset's seed; ``ds[i]`` depends on ``(seed, split, i)`` only.
        families: question families to draw from (uniformly); default all of
            :data:`FAMILIES` that ``num_objects`` allows.
        heldout_combos: ``(colour, shape)`` pairs kept out of train and test.
        object_size: half the side of an object's box in pixels; default ``image_size // 8``.
        two_sizes: also draw small objects (``0.6 * object_size``); captions then say
            "small" or "large".
        color_prior: ``None`` (the default: no bias) or ``(shape, colour, strength)``, a
            *biased* data set for Chapter 12: a sample whose scene holds a ``shape`` of
            another colour than ``colour`` is drawn again (from a seed of its own) with
            probability ``strength``, so such scenes become ``1 / (1 - strength)`` times
            rarer. With ``("circle", "blue", 0.98)`` circles are nearly always blue, and
            "what color is the circle?" is nearly always "blue". Still a pure function
            of ``(seed, split, index)``.
    """

    def __init__(self, split: str = "train", length: int = 10_000, *, image_size: int = 32,
                 num_objects=(1, 2), seed: int = 0, families: Optional[Iterable[str]] = None,
                 heldout_combos: Iterable[Combo] = DEFAULT_HELDOUT,
                 object_size: Optional[int] = None, two_sizes: bool = False,
                 color_prior: Optional[Tuple[str, str, float]] = None):
        owner = "ShapesDataset"
        self.split = _checks.one_of(split, "split", owner, SPLITS)
        self.length = _checks.integer(length, "length", owner, 0, MAX_LENGTH)
        self.seed = _checks.integer(seed, "seed", owner, 0, MAX_SEED)
        self.image_size = _checks.integer(image_size, "image_size", owner, minimum=16)
        self.num_objects = check_range(num_objects, "num_objects", owner, 1, len(COLORS))
        self.heldout_combos = _check_combos(heldout_combos, owner)
        if object_size is None:
            object_size = max(2, image_size // 8)
        self.object_size = _checks.integer(object_size, "object_size", owner, minimum=2)
        self.two_sizes = bool(two_sizes)
        self.families = self._check_families(families, owner)
        self.color_prior = _check_prior(color_prior, self.heldout_combos, split, owner)

        heldout = frozenset(self.heldout_combos)
        if split == "heldout":
            if not heldout:
                raise ValueError(f"{owner}: split='heldout' needs heldout_combos, got none")
            allowed = {c: SHAPES for c in COLORS}
            focus = tuple(sorted(heldout))
        else:
            allowed = {c: tuple(s for s in SHAPES if (c, s) not in heldout) for c in COLORS}
            focus = tuple((c, s) for c in COLORS for s in allowed[c])
        self._cfg = _Config(split, image_size, self.num_objects[0], self.num_objects[1],
                            object_size, max(1, round(0.6 * object_size)) if two_sizes else None,
                            allowed, focus, heldout)
        self._check_fits(owner)

    def _check_families(self, families, owner: str) -> Tuple[str, ...]:
        possible = tuple(f for f in FAMILIES if self.num_objects[1] >= 2 or f not in _NEEDS_TWO)
        if families is None:
            return possible
        families = check_families(families, FAMILIES, owner)
        too_few = [f for f in families if f not in possible]  # needs two or more objects
        if too_few:
            raise ValueError(f"{owner}: family {too_few[0]!r} needs scenes of two or more "
                             f"objects, but num_objects is {self.num_objects}")
        return families

    def _check_fits(self, owner: str) -> None:
        rng = Rng(sample_seed(_TAG, self.seed, self.split, 2**40 - 1))
        if sum(_place(rng, self._cfg, self.num_objects[1]) is not None for _ in range(5)) < 5:
            raise ValueError(
                f"{owner}: {self.num_objects[1]} objects of object_size {self.object_size} do "
                f"not fit reliably in a {self.image_size}x{self.image_size} image; use fewer "
                f"objects, a smaller object_size or a larger image_size")

    # -- the samples ------------------------------------------------------------------

    def __len__(self) -> int:
        return self.length

    def describe(self, index: int) -> dict:
        """Everything about sample ``index`` except the pixels (fast: nothing is drawn)."""
        index = check_index(index, self.length, "ShapesDataset")
        if self.color_prior is None:
            return self._describe(index, _TAG)
        shape, color, strength = self.color_prior
        for attempt in range(_PRIOR_TRIES):  # rejection: ~1 / (1 - P(break) * strength)
            sample = self._describe(index, _TAG if attempt == 0 else _PRIOR_TAG + attempt)
            breaks = any(o.shape == shape and o.color != color
                         for o in sample["scene"].objects)
            coin = Rng(sample_seed(_PRIOR_TAG, self.seed, self.split, index) + attempt)
            if not breaks or coin.random() >= strength:
                return sample
        return sample  # pragma: no cover - only when nearly every scene breaks the rule

    def _describe(self, index: int, tag: int) -> dict:
        rng = Rng(sample_seed(tag, self.seed, self.split, index))
        family = rng.choice(self.families)
        made = _retry(lambda: _ASK[family](rng, self._cfg), tries=50)
        if made is None:  # pragma: no cover - only with extreme custom settings
            raise RuntimeError(f"ShapesDataset: could not build a {family!r} sample {index}; "
                               f"try fewer objects or a larger image")
        objects, question, answer = made
        scene = Scene(self.image_size, objects)
        return dict(caption=_caption(rng, scene, self.two_sizes), question=question,
                    answer=answer, family=family, scene=scene)

    def __getitem__(self, index: int) -> dict:
        sample = self.describe(index)
        return dict(image=_to_tensor(render_scene(sample["scene"])), **sample)

    def scene(self, index: int) -> Scene:
        return self.describe(index)["scene"]

    def render(self, index: int) -> Image.Image:
        """Sample ``index`` as a PIL image (for looking at)."""
        return render_scene(self.scene(index))

    def answer_space(self) -> Dict[str, Tuple[str, ...]]:
        """Every answer each family can give in this split."""
        cfg = self._cfg
        spaces = {
            "shape": tuple(s for s in SHAPES if any(fs == s for _, fs in cfg.focus)),
            "color": tuple(c for c in COLORS if any(fc == c for fc, _ in cfg.focus)),
            "count": NUMBER_WORDS[:cfg.hi + 1],
            "exist": ("yes", "no"), "position": ("left", "right", "top", "bottom"),
            "relation": ("yes", "no"), "distance": tuple(COLORS), "compare": ("yes", "no"),
        }
        return {f: spaces[f] for f in self.families}

    def __repr__(self) -> str:
        return (f"ShapesDataset(split={self.split!r}, length={self.length}, image_size="
                f"{self.image_size}, num_objects={self.num_objects}, seed={self.seed}, "
                f"families={self.families}"
                + (f", color_prior={self.color_prior}" if self.color_prior else "") + ")")


def _check_prior(prior, heldout: Sequence[Combo], split: str, owner: str
                 ) -> Optional[Tuple[str, str, float]]:
    if prior is None:
        return None
    expected = ("color_prior must be None or (shape, colour, strength) with a shape in "
                f"{SHAPES}, a colour in {tuple(COLORS)} and a strength in [0, 1]")
    try:
        shape, color, strength = prior
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {expected}, got {prior!r}") from None
    if shape not in SHAPES or color not in COLORS \
            or not (_checks.is_number(strength) and 0 <= strength <= 1):
        raise ValueError(f"{owner}: {expected}, got {prior!r}")
    if split != "heldout" and (color, shape) in heldout:
        raise ValueError(f"{owner}: color_prior {(shape, color)!r} is a held-out pair, so "
                         f"split {split!r} never shows it; pick another pair or change "
                         f"heldout_combos")
    return shape, color, float(strength)


def _check_combos(combos, owner: str) -> Tuple[Combo, ...]:
    try:
        pairs = tuple(tuple(p) for p in combos)
    except TypeError:
        raise TypeError(f"{owner}: heldout_combos must be (colour, shape) pairs, "
                        f"got {combos!r}") from None
    for p in pairs:
        if len(p) != 2 or p[0] not in COLORS or p[1] not in SHAPES:
            raise ValueError(f"{owner}: heldout_combos entries must be (colour, shape) with a "
                             f"colour in {tuple(COLORS)} and a shape in {SHAPES}, got {p!r}")
    for c in COLORS:
        if all((c, s) in pairs for s in SHAPES):
            raise ValueError(f"{owner}: heldout_combos holds every shape of {c!r}, so {c!r} "
                             f"would never appear in training")
    return tuple(dict.fromkeys(pairs))
