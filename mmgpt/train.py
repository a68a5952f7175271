"""Train a MultimodalGPT on the book's shapes scenes, or on your own folder of images: a
Python API and a command line.

    python -m mmgpt.train --preset cpu --out runs/cpu          # ~4 minutes on 2 CPU cores
    python -m mmgpt.train --data my_photos --preset folder --out runs/mine   # your own folder
    python -m mmgpt.train --preset gpu --out runs/gpu          # the full task, one GPU
    python -m mmgpt.train --preset cpu --out runs/cpu --resume # continue where it stopped
    torchrun --nproc_per_node 2 -m mmgpt.train --preset cpu --out runs/ddp   # DDP

Everything a run needs is in a :class:`TrainConfig`; :data:`PRESETS` holds the named ones
and any field can be overridden (``--set steps=500 --set lr=1e-3``, or
``TrainConfig.from_preset("cpu", steps=500)``).

How a step is built, and why a run can be resumed exactly:

* **Batches** are a pure function of ``(seed, step)``: step ``s`` draws ``global_batch``
  indices from the training split with a generator seeded by ``seed`` and ``s``
  (:func:`step_indices`), and the shapes data set makes each sample from its index. No
  loader state has to be saved, a resumed run sees the batches the uninterrupted run
  would have seen, and under DDP rank ``r`` of ``w`` takes every ``w``-th index of the
  same global batch.
* **The loss** is the sum of the per-token cross-entropies over the global batch divided
  by its number of predicted tokens, however the batch is split over processes, so two
  processes give the same loss and gradients as one (up to float rounding).
* **The schedule** (linear warm-up, cosine decay to ``min_lr``) is a function of the step.
* **Checkpoints** (``checkpoint.pt`` in the output folder, every ``ckpt_every`` steps, at
  the end, and when the run is interrupted by Ctrl-C or SIGTERM) hold the model, the
  optimizer, the gradient scaler, the tokenizer, both configs and the step. They are
  written atomically (:func:`mmgpt.utils.save_atomic`) and read with
  ``torch.load(weights_only=True)``. The model sits under the keys of
  :meth:`MultimodalGPT.save`'s file (``model_config``, ``model``) and is read back, to
  resume, to start from ``init_from`` or to evaluate, by the same reader,
  :meth:`MultimodalGPT.from_checkpoint`.

Metrics go to ``metrics.jsonl`` in the output folder, one JSON object per line: training
lines (``"kind": "train"``: loss, learning rate, samples/s) and evaluation lines
(``"kind": "eval"``: accuracy per question family on held-out scenes, on the compositional
split, and with a blank image; see :mod:`mmgpt.evaluate`).

**Your own folder** (``data=PATH``, ``--data PATH``: a folder that
:class:`~mmgpt.data.FolderDataset` reads, or its index file) replaces the shapes scenes; the
rest of the run (steps, batches, checkpoints, resume, metrics) is the same code:

* the tokenizer is trained on the texts of the folder's training side (captions, questions,
  answers); it is byte-level, so held-out or new texts still encode, in more tokens;
* every image is resized to ``image_size``;
* captions and questions are mixed as the folder has them (:class:`FolderTasks`): a line with
  a caption and a question is two samples, so ``caption_fraction`` is not used;
* a share ``val_fraction`` of the folder's *images*, with all their lines, is held out to
  evaluate on (one image's questions are never on both sides), unless the folder brings its
  own ``train.jsonl``/``test.jsonl`` (or ``.json``); the evaluation reports accuracy per
  ``family`` (captions are the family ``"caption"``) on that side, with the baselines;
* a text too long for the model's ``context_length`` is an error before training starts,
  naming its line and the lengths (:func:`check_context`): nothing is cut.
* a bad line of the folder (its image missing, outside the folder or unreadable, a field
  missing, ...) is an error that lists the bad lines; ``data_strict=False`` skips them with
  one warning that counts them.

The shapes settings (``num_objects``, ``families``, ``caption_fraction``, ``train_size``,
``eval_size``, ``tokenizer_corpus``) are not used with ``data``.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._checks import integer, items, names, number, one_of
from .data import Collate, FolderDataset, RenderedPool, ShapesDataset, caption_corpus, split_by_image
from .evaluate import evaluate_splits
from .loss import IGNORE_INDEX, cross_entropy
from .model import MultimodalGPT, MultimodalGPTConfig, config_dict
from .patches import LearnedPositionEmbedding
from .tokenizer import BPETokenizer
from .utils import autocast_dtype, get_device, load_weights_only, save_atomic

__all__ = ["TrainConfig", "PRESETS", "RESUMABLE_CHANGES", "TaskMix", "FolderTasks", "read_folder",
           "check_context", "step_indices", "lr_at",
           "make_optimizer", "freeze", "train_mode", "amp_dtype", "usable_workers", "train_step",
           "make_loader", "config_from_checkpoint", "build_tokenizer", "build_datasets",
           "load_checkpoint", "model_from_checkpoint", "load_run", "evaluate_run", "train", "main"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
TOKENIZER = "tokenizer.json"
CHECKPOINT_FORMAT = "mmgpt-train"


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything one training run needs. ``model`` overrides fields of
    :class:`~mmgpt.model.MultimodalGPTConfig` (``vocab_size`` and ``image_token_id`` come
    from the tokenizer, ``image_size`` from here)."""

    preset: str = "custom"
    # data: the shapes scenes of mmgpt.data
    image_size: int = 32
    num_objects: Tuple[int, int] = (1, 2)
    families: Optional[Tuple[str, ...]] = ("shape", "color", "count", "exist")
    caption_fraction: float = 0.2      # share of training samples that ask for the caption
    train_size: int = 1_000_000        # training indices to draw from (scenes are made on demand)
    render_once: bool = False          # render the train_size scenes once, into memory (for GPUs)
    eval_size: int = 1_000             # held-out scenes per evaluation split
    vocab_size: int = 384              # BPE vocabulary trained on mmgpt.data.caption_corpus
    tokenizer_corpus: int = 20_000
    # model
    model: Dict[str, object] = field(default_factory=dict)
    init_from: Optional[str] = None    # a training checkpoint whose weights (and tokenizer) start this run
    freeze: Tuple[str, ...] = ()       # parameter-name prefixes not to train, e.g. ("encoder",)
    # optimisation
    steps: int = 1_000
    batch_size: int = 64               # the global batch: split over processes under DDP
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 50
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    # running
    seed: int = 0
    device: str = "auto"               # "auto": cuda, then mps, then cpu
    amp: str = "auto"                  # "auto", "bf16", "fp16" or "off"
    compile: bool = False
    num_workers: int = 0               # data workers; capped by the CPU cores this process may use
    eval_every: int = 250
    ckpt_every: int = 250
    log_every: int = 10
    max_minutes: Optional[float] = None  # stop (and save) after this wall time
    # your own data, instead of the shapes scenes (see the module docstring)
    data: Optional[str] = None         # a folder FolderDataset reads, or its index file
    val_fraction: float = 0.1          # share of its images held out (unless it has train/test)
    data_strict: bool = True           # False: skip the folder's bad lines, with one warning

    def __post_init__(self):
        fn = "TrainConfig"
        for name in ("train_size", "eval_size", "vocab_size", "tokenizer_corpus", "steps",
                     "batch_size", "eval_every", "ckpt_every", "log_every"):
            integer(getattr(self, name), name, fn, minimum=1)
        for name in ("warmup_steps", "num_workers", "seed"):
            integer(getattr(self, name), name, fn, minimum=0)
        integer(self.image_size, "image_size", fn, minimum=1, maximum=MAX_IMAGE_SIZE)
        for name in ("render_once", "compile", "data_strict"):  # spelled as JSON spells them: --set compile=true
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{fn}: {name} must be true or false, got {getattr(self, name)!r}")
        number(self.lr, "lr", fn)
        number(self.min_lr, "min_lr", fn)
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"{fn}: need 0 < min_lr <= lr, got lr={self.lr!r}, min_lr={self.min_lr!r}")
        number(self.weight_decay, "weight_decay", fn, low=0)
        number(self.grad_clip, "grad_clip", fn, low=0, low_open=True)
        number(self.caption_fraction, "caption_fraction", fn, 0, 1)
        if self.max_minutes is not None:
            number(self.max_minutes, "max_minutes", fn, low=0, low_open=True)
        if self.data is not None:
            if not isinstance(self.data, (str, os.PathLike)) or not os.fspath(self.data).strip():
                raise ValueError(f"{fn}: data must be a folder (or its index file), got {self.data!r}")
            self.data = os.path.abspath(os.fspath(self.data))  # a resumed run finds it from anywhere
        number(self.val_fraction, "val_fraction", fn, 0, 1, low_open=True, high_open=True)
        if self.data is None and self.render_once and self.train_size * 3 * self.image_size ** 2 > RENDER_ONCE_BYTES:
            raise ValueError(f"{fn}: render_once keeps train_size scenes in memory, 3 * "
                             f"image_size**2 bytes each: train_size={self.train_size} at "
                             f"image_size={self.image_size} is over 16 GiB; lower train_size")
        self.num_objects = tuple(integer(n, "num_objects", fn)
                                 for n in items(self.num_objects, "num_objects", fn, 2, "[2, 6]"))
        self.betas = tuple(number(b, "betas", fn, 0, 1, high_open=True)
                           for b in items(self.betas, "betas", fn, 2, "[0.9, 0.98]"))
        if self.families is not None:
            self.families = names(self.families, "families", fn)
        self.freeze = names(self.freeze, "freeze", fn)
        one_of(self.amp, "amp", fn, AMP_MODES)
        _check_model_overrides(self.model)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TrainConfig":
        """The named preset of :data:`PRESETS`, with ``overrides`` applied."""
        if name not in PRESETS:
            raise ValueError(f"TrainConfig.preset: unknown preset {name!r}; the presets are "
                             f"{sorted(PRESETS)}")
        values = dict(PRESETS[name], preset=name)
        model = _check_model_overrides(overrides.pop("model", {}))
        values.update(overrides, model=dict(values.get("model", {}), **model))
        return cls(**values)


MAX_IMAGE_SIZE = 1024  # pixels a side; a 100,000-pixel image needs 120 GB for one scene
RENDER_ONCE_BYTES = 16 * 2**30  # the most render_once may keep in memory
AMP_MODES = ("auto", "bf16", "fp16", "off")


def _check_model_overrides(model) -> dict:
    """``TrainConfig.model``: a dict of :class:`~mmgpt.model.MultimodalGPTConfig` fields,
    leaving out those the tokenizer and ``TrainConfig.image_size`` decide."""
    fn = "TrainConfig"
    if not isinstance(model, dict):
        raise ValueError(f"{fn}: model must be a dict of MultimodalGPTConfig overrides, got {model!r}")
    fixed = {"vocab_size", "image_token_id", "image_size"} & set(model)
    if fixed:
        raise ValueError(f"{fn}: model must not set {sorted(fixed)}: they come from the "
                         f"tokenizer and from TrainConfig.image_size")
    unknown = set(model) - {f.name for f in dataclasses.fields(MultimodalGPTConfig)}
    if unknown:
        raise ValueError(f"{fn}: model has unknown MultimodalGPTConfig fields {sorted(unknown)}")
    return model


PRESETS: Dict[str, dict] = {
    # The easy task on a laptop: 1-2 objects at 32x32; shape, colour and count questions and
    # captions (a fifth of the samples). Sized to pass 95% on the questions in under 4 minutes
    # on 2 CPU cores: 2,400 steps of 32 scenes, a 0.36M-parameter model (Chapter 08's).
    "cpu": dict(image_size=32, num_objects=(1, 2), families=("shape", "color", "count"),
                steps=2_400, batch_size=32, lr=1e-3, min_lr=1e-4, warmup_steps=50,
                eval_every=400, ckpt_every=400,
                model=dict(dim=96, num_layers=2, num_heads=4, fusion="prefix", fused=True)),
    # The full task: 2-6 objects at 48x48, every question family (relations too). The
    # recipe of the recorded run in mmgpt/results/cpu-full (768,000 samples, 86 minutes on one
    # thread of a 2-core CPU), which learned what is in a scene but not yet all of where
    # (Chapter 11 draws it per family).
    # 48 pixels and three CNN stages make a 6x6 grid of image tokens, fine enough to tell
    # "left of" apart; a bigger learning rate than the cpu preset's got the families off
    # their plateaus sooner. Captions stay at 20%: they name every object's shape and colour
    # and teach the model to look (with 5%, colour was still at chance after 192,000 samples).
    "gpu": dict(image_size=48, num_objects=(2, 6), families=None, vocab_size=512,
                steps=12_000, batch_size=64, lr=2e-3, min_lr=1e-4, warmup_steps=300,
                eval_every=1_000, ckpt_every=500, num_workers=6, log_every=50,
                model=dict(dim=128, num_layers=4, num_heads=4, fusion="prefix", fused=True,
                           cnn_blocks=1, cnn_widths=(16, 32, 64))),
    # Your own folder (--data PATH) of a few thousand images on a laptop CPU: 64 pixels (a
    # 4x4 grid of image tokens, as 32 pixels give the shapes), room for sentence-long captions
    # (64 tokens), the images decoded and resized once into memory (12 KiB a sample). The
    # model is the cpu preset's with one more CNN stage. On scikit-learn's 1,797 digits (a
    # caption and two questions each) it trained at ~560 samples/s on 2 quiet CPU cores (the
    # 2,000 steps in about 2 minutes) and passed 94% on the held-out images by step 250.
    "folder": dict(image_size=64, vocab_size=512, render_once=True, val_fraction=0.1,
                   steps=2_000, batch_size=32, lr=1e-3, min_lr=1e-4, warmup_steps=50,
                   eval_every=250, ckpt_every=250,
                   model=dict(dim=96, num_layers=2, num_heads=4, context_length=64,
                              fusion="prefix", fused=True)),
    # A few seconds, for tests and for trying the command line.
    "tiny": dict(image_size=32, num_objects=(1, 2), families=("shape", "color"),
                 steps=20, batch_size=16, eval_size=64, vocab_size=300, tokenizer_corpus=2_000,
                 warmup_steps=5, eval_every=10, ckpt_every=10, log_every=5,
                 model=dict(dim=32, num_layers=1, num_heads=2)),
}


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

# TaskMix's hash of (index, seed) onto [0, 2**64), with two constants of SplitMix64.
# 2**64 / golden ratio: index * GOLDEN_GAMMA spreads consecutive indices evenly, so any
# stretch of samples holds about caption_fraction captions.
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
# An odd 64-bit multiplier: each seed turns every hash by its own offset (other captions).
SPLITMIX_MULTIPLIER = 0xBF58476D1CE4E5B9


class TaskMix:
    """A shapes data set where a fixed share of the samples asks for the caption instead of
    the question (their ``question``/``answer`` are dropped and ``family`` is ``"caption"``).
    Which samples do is a pure function of the index, like everything else in the data."""

    def __init__(self, dataset, caption_fraction: float, seed: int = 0):
        self.dataset = dataset
        self.caption_fraction = float(caption_fraction)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def is_caption(self, index: int) -> bool:
        """A hash of ``(index, seed)`` onto ``[0, 1)``, below ``caption_fraction``?"""
        h = (index * GOLDEN_GAMMA + self.seed * SPLITMIX_MULTIPLIER) % 2**64
        return h / 2**64 < self.caption_fraction

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        if self.is_caption(index):
            sample = dict(sample, question=None, answer=None, family="caption")
        return sample


class FolderTasks:
    """A folder's samples (a :class:`~mmgpt.data.FolderDataset`) as the samples a run trains
    and evaluates on: a caption is one, a question with its answer another, so a line that
    has both is two, and the mix of captions and questions is the folder's own. A caption
    sample has ``family="caption"`` and no question, a question sample no caption, as the
    task mix of the shapes scenes (:class:`TaskMix`) makes them."""

    def __init__(self, folder):
        self.folder = folder
        self.items: List[Tuple[int, str]] = []
        for i in range(len(folder)):
            sample = folder.describe(i)
            self.items += [(i, kind) for kind, field in (("caption", "caption"), ("qa", "question"))
                           if sample.get(field) is not None]

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def _task(sample: dict, kind: str) -> dict:
        if kind == "caption":
            return dict(sample, question=None, answer=None, family="caption")
        return dict(sample, caption=None)

    def describe(self, index: int) -> dict:
        """Sample ``index`` without its image (what the baselines and checks read)."""
        i, kind = self.items[index]
        return self._task(self.folder.describe(i), kind)

    def __getitem__(self, index: int) -> dict:
        i, kind = self.items[index]
        return self._task(self.folder[i], kind)

    def __repr__(self) -> str:
        return f"FolderTasks({self.folder!r}, samples={len(self)})"


def _own_split(root: str) -> bool:
    """Does the folder bring its own split (``train``/``test`` files, see FolderDataset)?"""
    return any(os.path.isfile(os.path.join(root, f"{side}{ext}"))
               for side in ("train", "test") for ext in (".jsonl", ".json"))


def read_folder(path, image_size: Optional[int] = None, *, holdout: Optional[float] = None,
                seed: int = 0, strict: bool = True):
    """The :class:`~mmgpt.data.FolderDataset` at ``path`` (a folder, or an index file in one).

    ``holdout=None``: the data to evaluate on, the folder's own ``test`` side if it brings
    one, else its whole index. ``holdout=f``: ``(train, test)``, the folder's own split if it
    brings one, else its index read once and a share ``f`` of its images held out by
    :func:`~mmgpt.data.split_by_image` (drawn by ``seed``; one image's lines never on both
    sides). ``strict=False`` skips bad lines with one warning that counts them (else they
    are one error that lists them)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"data: {path} does not exist (expected a folder of images "
                                f"with an index, or the index file)")
    root, index = (path, None) if os.path.isdir(path) else (os.path.dirname(path), os.path.basename(path))
    own = index is None and _own_split(root)
    read = functools.partial(FolderDataset, root, index, image_size=image_size, strict=strict)
    if holdout is None:
        return read(split="test" if own else None)
    if own:
        return read(split="train"), read(split="test")
    whole = read()
    return tuple(whole.subset(side) for side in split_by_image(whole, holdout, seed))


def _folder_texts(dataset) -> List[str]:
    """Every caption, question and answer of a data set (read without its images)."""
    return [sample[field] for i in range(len(dataset)) for sample in [dataset.describe(i)]
            for field in ("caption", "question", "answer") if sample.get(field) is not None]


def build_tokenizer(config: TrainConfig, datasets: Optional[dict] = None) -> BPETokenizer:
    """A BPE tokenizer trained on the book's caption corpus (deterministic, a few seconds),
    or, with ``config.data``, on the texts of the folder's training side (``datasets``:
    :func:`build_datasets`'s, if already built)."""
    if config.data is None:
        return BPETokenizer.train(caption_corpus(config.tokenizer_corpus, seed=0), config.vocab_size)
    train = (datasets or build_datasets(config))["train"]
    return BPETokenizer.train(_folder_texts(train), config.vocab_size)


def check_context(tokenizer, datasets: dict, context_length: int, fn: str = "train") -> None:
    """Every sample of ``datasets`` (a dict of data sets with ``describe``) must fit in the
    model's ``context_length`` as :class:`~mmgpt.data.Collate` lays it out; else one error
    that counts the samples too long and names the longest (its line), before any step is
    taken: a sequence is never cut. A text the tokenizer cannot encode is named the same way."""
    collate = Collate(tokenizer, task="auto", image_tokens=1)
    too_long, longest = 0, (0, None)
    for name, data in datasets.items():
        for i in range(len(data)):
            sample = data.describe(i)
            try:
                length = len(collate.encode(sample)[0])
            except ValueError as err:
                raise ValueError(f"{fn}: {_where(sample, name, i)}: {err}") from None
            too_long += length > context_length
            longest = max(longest, (length, _where(sample, name, i), sample), key=lambda x: x[0])
    if too_long:
        length, where, sample = longest
        text = sample.get("question") or sample.get("caption")
        text = text if len(text) <= 60 else text[:57] + "..."
        raise ValueError(
            f"{fn}: {too_long} sample(s) of the data are longer than the model's context_length="
            f"{context_length} tokens; the longest, {where} ({text!r}), is {length} tokens with "
            f"its prompt and answer. Nothing is cut: pass --set model.context_length={length} "
            f"(TrainConfig(model=dict(context_length={length}))), or shorten the text")


def _where(sample: dict, split: str, index: int) -> str:
    """Where a sample comes from, for a message: its index line (a folder's), else its split
    and position."""
    if sample.get("where"):
        return sample["where"]
    return f"line {sample['line']}" if sample.get("line") else f"{split} sample {index}"


def build_datasets(config: TrainConfig) -> Dict[str, object]:
    """The training mix and the evaluation splits: ``test`` (new scenes), ``heldout``
    (the compositional split: colour-shape pairs never seen in training). With
    ``config.data``: the folder's ``train`` and ``test`` sides as :class:`FolderTasks`
    (its own split, or ``val_fraction`` of its images held out, drawn by ``seed``)."""
    if config.data is not None:
        sides = read_folder(config.data, config.image_size, holdout=config.val_fraction,
                            seed=config.seed, strict=config.data_strict)
        return {"train": FolderTasks(sides[0]), "test": FolderTasks(sides[1])}
    common = dict(image_size=config.image_size, num_objects=config.num_objects,
                  families=config.families, seed=config.seed)
    return {
        "train": TaskMix(ShapesDataset("train", config.train_size, **common),
                         config.caption_fraction, config.seed),
        "test": ShapesDataset("test", config.eval_size, **common),
        "heldout": ShapesDataset("heldout", config.eval_size, **common),
    }


# A prime above any run's step count: seed * SEED_STRIDE + step gives every (seed, step)
# pair its own generator seed, so two seeds never share a batch.
SEED_STRIDE = 1_000_003


def step_indices(step: int, config: TrainConfig, rank: int = 0, world: int = 1,
                 size: Optional[int] = None) -> List[int]:
    """The training indices of step ``step`` for process ``rank`` of ``world``: the global
    batch is a pure function of ``(seed, step)`` and each rank takes every ``world``-th.
    They are drawn from ``range(size)``: the training set's length, ``config.train_size``
    unless given (a folder's is its own)."""
    g = torch.Generator().manual_seed(config.seed * SEED_STRIDE + step)
    batch = torch.randint(config.train_size if size is None else size, (config.batch_size,), generator=g)
    return batch[rank::world].tolist()


def _worker_ignores_stop_signals(worker_id: int) -> None:
    """Data workers leave SIGTERM and Ctrl-C to the training process. Slurm, systemd,
    Kubernetes and ``timeout`` signal the whole process group: a worker that died of it
    first would take the run down before the training process could save."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(config: TrainConfig, dataset, collate: Collate, start: int = 0, rank: int = 0,
                world: int = 1, workers: int = 0, pin_memory: bool = False):
    """The DataLoader of a run: the batches of steps ``start .. steps - 1`` for this rank."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=_StepBatches(config, start, rank, world, len(dataset)), collate_fn=collate,
        num_workers=workers, persistent_workers=False, pin_memory=pin_memory,
        worker_init_fn=_worker_ignores_stop_signals if workers else None)


class _StepBatches(torch.utils.data.Sampler):
    """Batch sampler for a DataLoader: the indices of steps ``start .. steps - 1``."""

    def __init__(self, config: TrainConfig, start: int, rank: int, world: int, size: int):
        self.config, self.start, self.rank, self.world, self.size = config, start, rank, world, size

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.start, self.config.steps):
            yield step_indices(step, self.config, self.rank, self.world, self.size)

    def __len__(self) -> int:
        return max(0, self.config.steps - self.start)


# --------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------

def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


# Modules whose weight is a table looked up by index (a token, a position), not a matrix
# that multiplies: weight decay would pull rarely seen rows to zero.
LOOKUP_TABLES = (nn.Embedding, LearnedPositionEmbedding)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups, by what a parameter does: the matrices that multiply (linear
    layers, convolution kernels: ``dim() >= 2``) decay; biases, norm scales and gates
    (``dim() < 2``) and lookup tables (:data:`LOOKUP_TABLES`: token and position
    embeddings; the token table is also the tied output head) do not."""
    tables = {id(p) for m in model.modules() if isinstance(m, LOOKUP_TABLES)
              for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in tables else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def freeze(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Stop training the parameters whose names start with one of ``prefixes`` (and put
    their modules' batch-norm statistics out of reach: frozen means frozen)."""
    frozen = 0
    for prefix in prefixes:
        matched = [p for name, p in model.named_parameters() if name.startswith(prefix)]
        if not matched:
            raise ValueError(f"train: freeze={prefix!r} matches no parameter; top-level "
                             f"parts are {sorted({n.split('.')[0] for n, _ in model.named_parameters()})}")
        for p in matched:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def train_mode(model: nn.Module, frozen_prefixes: Sequence[str]) -> None:
    """``model.train()``, except frozen parts stay in eval mode (batch norm keeps its
    running statistics, dropout stays off)."""
    model.train()
    for name, module in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in frozen_prefixes):
            module.eval()


def amp_dtype(config: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """``auto``: :func:`mmgpt.utils.autocast_dtype`. ``bf16`` and ``fp16`` are taken as asked
    on CUDA and on the CPU (where they are slow, but the same code path: the tests run it)."""
    if config.amp == "off":
        return None
    if config.amp == "auto":
        return autocast_dtype(device)
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"TrainConfig: amp={config.amp!r} needs a CUDA device or the CPU, "
                         f"got {device.type}")
    return torch.bfloat16 if config.amp == "bf16" else torch.float16


def usable_workers(requested: int) -> int:
    """How many data workers to start: ``requested``, but at most one fewer than the CPU
    cores this process may use (shared among the processes torchrun starts on this machine),
    so that the training process keeps a core. A free Colab machine has two: one worker."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(requested, per_process - 1))


def train_step(net: nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, autocast, grad_clip: float,
               world: int = 1) -> Tuple[Tensor, Tensor]:
    """One optimisation step on a batch already on the device: forward under ``autocast``,
    the loss over the global batch's predicted tokens, backward through the gradient
    scaler, clipping, the optimizer. :func:`train` takes it and :mod:`mmgpt.bench` times it.
    Returns the summed token loss (detached) and the number of predicted tokens."""
    targets = batch["labels"][:, 1:]
    count = _all_reduce_sum((targets != IGNORE_INDEX).sum().float(), world)
    with autocast:
        logits, _ = net(batch["images"], batch["input_ids"])
        loss_sum = cross_entropy(logits[:, :-1].float(), targets, reduction="sum")
    loss = loss_sum * world / count  # DDP averages gradients over the world
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss_sum.detach(), count


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------

def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a training checkpoint (``weights_only=True``) and check that it is one."""
    fn = "load_checkpoint"
    ckpt = load_weights_only(path, fn, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{fn}: {path} is not an mmgpt training checkpoint")
    return ckpt


def config_from_checkpoint(ckpt: dict, where: str = "the checkpoint") -> TrainConfig:
    """The :class:`TrainConfig` a training checkpoint was made with."""
    saved = ckpt.get("train_config")
    if not isinstance(saved, dict):
        raise ValueError(f"{where} has no train_config: not a training checkpoint of mmgpt.train")
    unknown = set(saved) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"{where}: its train_config has fields this version of mmgpt does not "
                         f"know: {sorted(unknown)}")
    return TrainConfig(**saved)


def model_from_checkpoint(ckpt: dict) -> Tuple[MultimodalGPT, BPETokenizer]:
    """The model (eval mode, on the CPU) and the tokenizer stored in a training checkpoint,
    checked to belong together: a tokenizer with another vocabulary than the model's, or
    weights that are not finite, would evaluate to a wrong number without a word. The model
    is read as ``MultimodalGPT.load`` reads it (:meth:`MultimodalGPT.from_checkpoint`)."""
    model = MultimodalGPT.from_checkpoint(ckpt, fn="model_from_checkpoint")
    if "tokenizer" not in ckpt:
        raise ValueError("model_from_checkpoint: the checkpoint has no 'tokenizer'")
    tokenizer = BPETokenizer(merges=ckpt["tokenizer"]["merges"])
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"model_from_checkpoint: the checkpoint's tokenizer has "
                         f"{tokenizer.vocab_size} tokens but its model reads "
                         f"{model.config.vocab_size}: the file was altered or mixed up")
    broken = [name for name, t in ckpt["model"].items()
              if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise ValueError(f"model_from_checkpoint: the checkpoint's weights are not finite "
                         f"(NaN or inf in {len(broken)} tensors, e.g. {broken[0]}): the run "
                         f"that saved it diverged")
    return model.eval(), tokenizer


def load_run(run, fn: str = "load_run") -> Tuple[MultimodalGPT, BPETokenizer, TrainConfig, int]:
    """The model (eval mode, on the CPU), its tokenizer, the config and the step of a
    training run (``run``: its folder or its checkpoint file). The tokenizer is always the
    checkpoint's own, the one the model was trained with; a ``tokenizer.json`` beside the
    checkpoint that is another one is refused (the files of two runs mixed up)."""
    run = os.fspath(run)
    if not os.path.exists(run):
        raise FileNotFoundError(f"{fn}: no checkpoint at {run} (expected a run folder holding "
                                f"{CHECKPOINT}, or the checkpoint file)")
    path = os.path.join(run, CHECKPOINT) if os.path.isdir(run) else run
    ckpt = load_checkpoint(path)
    config = config_from_checkpoint(ckpt, path)
    model, tokenizer = model_from_checkpoint(ckpt)
    beside = os.path.join(os.path.dirname(path), TOKENIZER)
    if os.path.isfile(beside) and BPETokenizer.load(beside) != tokenizer:
        raise ValueError(f"{fn}: {beside} is not the tokenizer {path} was trained with (the files "
                         f"of two runs mixed up?); a model is only ever read with its own "
                         f"tokenizer: restore the run's {TOKENIZER} or delete it")
    return model, tokenizer, config, int(ckpt["step"])


def evaluate_run(run, eval_size: Optional[int] = None, device="cpu", data=None
                 ) -> Tuple[dict, TrainConfig]:
    """Evaluate a trained run: the model in its checkpoint (``run`` is the run's folder or
    the checkpoint file) on the held-out splits of the run's own data, ``eval_size`` scenes
    per split (default: the run's ``eval_size``), with :func:`mmgpt.evaluate.evaluate_splits`.
    ``data``: a folder to evaluate on instead (all of it, or its own ``test`` side; the
    run's own folder means its held-out side), read with the run's tokenizer and image size;
    the baselines still come from the run's training data, when it can still be read.
    Returns the accuracies with the checkpoint's ``step``, and the run's config."""
    model, tokenizer, config, step = load_run(run, "evaluate")
    if data is None:
        datasets = build_datasets(config if eval_size is None
                                  else dataclasses.replace(config, eval_size=eval_size))
    else:
        try:
            own = build_datasets(config)
        except FileNotFoundError as err:
            own = {}
            warnings.warn(f"evaluate: the run's training data cannot be read ({err}); the "
                          f"baselines are left out", stacklevel=2)
        if config.data is not None and own and _same_file(data, config.data, own["train"].folder.index):
            datasets = own  # the run's own folder: its held-out side, not the images it trained on
        else:
            datasets = {"test": FolderTasks(read_folder(data, config.image_size, strict=config.data_strict)),
                        **{k: v for k, v in own.items() if k == "train"}}
    if data is not None or config.data is not None:
        check_context(tokenizer, {"test": datasets["test"]}, model.config.context_length, fn="evaluate")
    collate = Collate(tokenizer, task="auto", max_length=model.config.context_length)
    result = evaluate_splits(model.to(device), tokenizer, datasets, device, collate)
    return dict(result, step=step), config


def _same_file(path, *others) -> bool:
    """Is ``path`` one of ``others`` (after links and relative parts are resolved)?"""
    return os.path.realpath(path) in {os.path.realpath(p) for p in others}


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------

def _distributed(device: torch.device) -> Tuple[int, int, int]:
    """``(rank, world, local_rank)``; starts the process group when run under torchrun,
    with NCCL when the run trains on CUDA and gloo otherwise (``device="cpu"`` on a GPU
    machine too)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _all_reduce_sum(t: Tensor, world: int) -> Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


class _StopFlag:
    """Turns SIGTERM (and SIGINT, Ctrl-C) into a polite request: the loop finishes its step,
    saves a checkpoint and returns."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


# Fields a resumed run may change: they decide how a run is watched and stopped, never
# which steps it takes.
RESUMABLE_CHANGES = ("num_workers", "max_minutes", "log_every", "ckpt_every", "eval_every")


class _RunLock:
    """One run per folder: an exclusive ``flock`` on ``<out>/.lock`` for as long as the run
    lives (the system drops it when the process dies, so a killed run leaves no stale lock).
    Only rank 0 takes it; where ``fcntl`` is missing (Windows) nothing is locked."""

    def __init__(self, out_dir: str, rank: int):
        self.file = None
        if rank != 0:
            return
        try:
            import fcntl
        except ImportError:
            return
        path = os.path.join(out_dir, ".lock")
        self.file = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            owner = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise FileExistsError(f"train: another run is training in {out_dir} ({owner} "
                                  f"holds {path}); wait for it to end or choose another folder")
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def train(config: TrainConfig, out_dir, *, resume=False, progress: bool = True,
          evaluate_fn=None, stop_at: Optional[int] = None) -> dict:
    """Train (or, with ``resume=True``, continue) a run in ``out_dir``; returns a summary
    dict (final step, last loss, last evaluation, wall time, whether it was interrupted).

    ``resume="auto"`` continues the run if ``out_dir`` holds a checkpoint and starts it
    otherwise: what ``torchrun --max-restarts`` needs, since it restarts failed processes
    with the same arguments. ``stop_at`` stops after that step as an interruption would
    (save, then return), so that tests and the book can show that ``resume`` continues
    exactly. ``evaluate_fn`` replaces :func:`mmgpt.evaluate.evaluate_splits` (same
    arguments). Under torchrun only rank 0 evaluates; the other ranks report ``eval=None``.

    A folder holds one run: a second run into it is refused while the first trains, and a
    fresh run refuses a folder with another run's checkpoint or metrics. A resumed run may
    change only :data:`RESUMABLE_CHANGES`. A loss that stops being finite ends the run with
    ``FloatingPointError`` before anything is saved, so the last checkpoint stays good.

    Three parts: :func:`_start_run` builds everything a run holds (a :class:`_Run`),
    :func:`train_step` takes one step, :func:`_train_loop` steps, logs, evaluates, saves."""
    if resume not in (True, False, "auto"):
        raise ValueError(f"train: resume must be True, False or 'auto', got {resume!r}")
    # A model that cannot be built is refused before anything is written (a vocabulary
    # just big enough for the default <image> id stands in for the tokenizer's).
    MultimodalGPTConfig(vocab_size=max(config.vocab_size, MultimodalGPTConfig.image_token_id + 1),
                        image_size=config.image_size, **config.model)
    device = get_device(None if config.device == "auto" else config.device)
    rank, world, local_rank = _distributed(device)
    if config.batch_size % world:
        raise ValueError(f"train: batch_size={config.batch_size} must be divisible by the "
                         f"number of processes ({world})")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    lock = _RunLock(out_dir, rank)
    try:
        run = _start_run(config, out_dir, resume, progress, evaluate_fn or evaluate_splits,
                         device, rank, world, local_rank)
        return _train_loop(run, stop_at)
    finally:
        lock.release()


@dataclass
class _Run:
    """What a run holds while it trains: built by :func:`_start_run`, read and advanced by
    :func:`_train_loop` (``step``, ``finite``) and its helpers."""

    config: TrainConfig
    out_dir: str
    device: torch.device
    rank: int
    world: int
    tokenizer: BPETokenizer
    model_config: MultimodalGPTConfig
    model: MultimodalGPT        # the weights: saved, evaluated
    net: nn.Module              # what steps: the model, wrapped for DDP and compiled if asked
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: object            # torch.autocast, or a nullcontext without mixed precision
    datasets: dict
    collate: Collate
    loader: object              # the DataLoader of steps step..steps - 1
    workers: int
    frozen: int                 # parameters frozen by config.freeze
    evaluate_fn: object
    progress: bool
    step: int                   # steps taken
    finite: Tensor              # on the device: have all losses so far been finite?

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.out_dir, CHECKPOINT)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.out_dir, METRICS)


def _start_run(config: TrainConfig, out_dir: str, resume, progress: bool, evaluate_fn,
               device: torch.device, rank: int, world: int, local_rank: int) -> _Run:
    """Everything a run needs before its first step: the data, the tokenizer and model (new,
    from ``init_from``, or from the checkpoint it resumes), optimizer, gradient scaler. A
    folder's texts are checked to fit the model's context before anything is written."""
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    resume = _resolve_resume(resume, out_dir, rank)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)

    datasets = build_datasets(config)
    start, ckpt, init = 0, None, None
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        _check_same_run(config, config_from_checkpoint(ckpt, ckpt_path), out_dir)
        tokenizer = BPETokenizer(merges=ckpt["tokenizer"]["merges"])
        start = int(ckpt["step"])
    else:
        init = load_checkpoint(config.init_from) if config.init_from else None
        tokenizer = (BPETokenizer(merges=init["tokenizer"]["merges"]) if init
                     else build_tokenizer(config, datasets))

    model_config = MultimodalGPTConfig.for_tokenizer(tokenizer, image_size=config.image_size,
                                                     **config.model)
    if config.data is not None:  # the shapes scenes' texts fit every preset's context
        check_context(tokenizer, {k: datasets[k] for k in ("train", "test")}, model_config.context_length)
    if not resume and rank == 0:
        tokenizer.save(os.path.join(out_dir, TOKENIZER))
    torch.manual_seed(config.seed)
    if ckpt or init:  # the one checkpoint reader: the model config this run asks for, or an error
        where = ckpt_path if resume else f"init_from={config.init_from}"
        model = MultimodalGPT.from_checkpoint(ckpt or init, model_config, where=where, fn="train")
        del init
    else:
        model = MultimodalGPT(model_config)
    frozen = freeze(model, config.freeze)
    model.to(device)
    optimizer = make_optimizer(model, config)
    amp = amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if resume:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        _truncate_metrics(os.path.join(out_dir, METRICS), start)
        del ckpt
    net = _wrap(model, device, world, config.compile)

    workers = usable_workers(config.num_workers)
    train_data = datasets["train"]
    if config.render_once:
        if len(train_data) * 3 * config.image_size ** 2 > RENDER_ONCE_BYTES:
            raise ValueError(f"train: render_once would keep {len(train_data)} samples of "
                             f"{config.image_size}x{config.image_size} pixels in memory, over 16 GiB; "
                             f"pass --set render_once=false or a smaller image_size")
        train_data = RenderedPool(train_data, num_workers=workers, progress=progress and rank == 0)
    collate = Collate(tokenizer, task="auto", image_tokens=1,
                      max_length=model_config.context_length)
    loader = make_loader(config, train_data, collate, start, rank, world, workers,
                         pin_memory=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    return _Run(config=config, out_dir=out_dir, device=device, rank=rank, world=world,
                tokenizer=tokenizer, model_config=model_config, model=model, net=net,
                optimizer=optimizer, scaler=scaler, autocast=autocast, datasets=datasets,
                collate=collate, loader=loader, workers=workers, frozen=frozen,
                evaluate_fn=evaluate_fn, progress=progress, step=start,
                finite=torch.ones((), dtype=torch.bool, device=device))


def _wrap(model: MultimodalGPT, device: torch.device, world: int, compiled: bool) -> nn.Module:
    """What takes the steps: the model, under DDP when there are several processes, compiled
    if asked."""
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if compiled else net


def _check_same_run(config: TrainConfig, saved: TrainConfig, out_dir: str) -> None:
    """A resumed run may differ from the one it continues only in :data:`RESUMABLE_CHANGES`."""
    saved = config_dict(saved)
    diff = [k for k, v in config_dict(config).items()
            if saved[k] != v and k not in RESUMABLE_CHANGES]
    if diff:
        raise ValueError(f"train: --resume with another config than the run in {out_dir}; "
                         f"it differs in {diff} (a resumed run may change only "
                         f"{list(RESUMABLE_CHANGES)})")


def _resolve_resume(resume, out_dir: str, rank: int) -> bool:
    """Whether this run continues the one in ``out_dir`` (``"auto"``: if it holds a
    checkpoint); a fresh run refuses a folder that holds another run."""
    ckpt_path, metrics_path = os.path.join(out_dir, CHECKPOINT), os.path.join(out_dir, METRICS)
    if resume == "auto":
        resume = os.path.exists(ckpt_path)
        if not resume and rank == 0:  # a restart before the first save: the same run, anew
            _truncate_metrics(metrics_path, 0)
    elif not resume and os.path.exists(ckpt_path):
        raise FileExistsError(f"train: {out_dir} already holds a run ({CHECKPOINT}); pass "
                              f"resume=True (--resume) to continue it or choose another folder")
    elif not resume and rank == 0 and os.path.exists(metrics_path):
        raise FileExistsError(f"train: {out_dir} holds {METRICS} from another run but no "
                              f"checkpoint (stopped before its first save?); delete it or "
                              f"choose another folder")
    return resume


def _train_loop(run: _Run, stop_at: Optional[int] = None) -> dict:
    """Step until ``config.steps``, a stop signal, ``max_minutes`` or ``stop_at``: log the
    loss every ``log_every`` steps, evaluate every ``eval_every``, save every ``ckpt_every``
    and on any stop. Nothing waits for the device except reading the loss to log it."""
    config, model = run.config, run.model
    bar, speed = _progress_bar(run), _Throughput()
    t0, loss_value, last_eval, interrupted = time.perf_counter(), float("nan"), None, None
    train_mode(model, config.freeze)
    with _StopFlag() as stop:
        for batch in run.loader:
            batch = {k: batch[k].to(run.device, non_blocking=True)
                     for k in ("images", "input_ids", "labels")}
            for group in run.optimizer.param_groups:
                group["lr"] = lr_at(run.step, config)
            # The loss is the mean over every predicted token of the *global* batch.
            loss_sum, count = train_step(run.net, batch, run.optimizer, run.scaler, run.autocast,
                                         config.grad_clip, run.world)
            run.finite &= torch.isfinite(loss_sum)  # stays on the device: no sync
            run.step += 1
            speed.add(config.batch_size)
            if _due(run.step, config.log_every, config):
                loss_value = _log_loss(run, loss_sum, count, speed, bar)
            bar.update(1)
            interrupted = _stop_requested(run, stop, t0)
            if interrupted:  # save at once: the machine may be going away
                _save(run)
                break
            if _due(run.step, config.eval_every, config):
                last_eval = _evaluate(run)
                train_mode(model, config.freeze)
            if _due(run.step, config.ckpt_every, config):
                _save(run)
            if run.step == stop_at and run.step < config.steps:
                interrupted = "stop_at"  # a planned pause, after this step's evaluation
                _save(run)
                break
    bar.close()
    if interrupted and last_eval is None:
        last_eval = _evaluate(run)
    return {"step": run.step, "loss": loss_value, "eval": last_eval, "interrupted": interrupted,
            "seconds": time.perf_counter() - t0, "out_dir": run.out_dir,
            "parameters": model.num_parameters(), "frozen_parameters": run.frozen,
            "device": str(run.device), "world": run.world, "num_workers": run.workers}


def _due(step: int, every: int, config: TrainConfig) -> bool:
    """Is ``step`` one of every ``every``-th steps, or the last?"""
    return step % every == 0 or step == config.steps


def _progress_bar(run: _Run):
    from tqdm.auto import tqdm

    # At most one refresh a second: in a notebook each refresh is a widget message, and a
    # test runner that reads them only after the cell (nbval) loses messages past ~2,000.
    return tqdm(total=run.config.steps, initial=run.step, desc=f"train {run.config.preset}",
                disable=not run.progress or run.rank != 0, unit="step", dynamic_ncols=True,
                mininterval=1.0)


class _Throughput:
    """Samples per second since the last reading."""

    def __init__(self):
        self.since, self.samples = time.perf_counter(), 0

    def add(self, samples: int) -> None:
        self.samples += samples

    def read(self) -> float:
        now = time.perf_counter()
        speed = self.samples / max(now - self.since, 1e-9)
        self.since, self.samples = now, 0
        return speed


def _log_loss(run: _Run, loss_sum: Tensor, count: Tensor, speed: _Throughput, bar) -> float:
    """Read the loss (the loop's one host sync), log it with the speed, show it on the bar."""
    _check_finite(run)
    loss = float(_all_reduce_sum(loss_sum.detach().float(), run.world) / count)
    samples_per_s = speed.read()  # after the sync: the time the device took, too
    _log(run, {"kind": "train", "step": run.step, "loss": loss,
               "lr": run.optimizer.param_groups[0]["lr"], "samples_per_s": samples_per_s})
    bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{samples_per_s:.0f}", refresh=False)
    return loss


def _check_finite(run: _Run) -> None:
    """Raise if a loss so far was not finite: a host sync, so only where the loss is read
    anyway (logging, saving)."""
    if not bool(run.finite):
        raise FloatingPointError(
            f"train: the loss stopped being finite by step {run.step} (lr={run.config.lr}, "
            f"amp={run.config.amp}); nothing was saved after it, so {CHECKPOINT} in "
            f"{run.out_dir} still holds the last good step. Try a lower lr or amp='off'")


def _stop_requested(run: _Run, stop: "_StopFlag", t0: float) -> Optional[str]:
    """Why to stop after this step: the signal's name, ``"max_minutes"``, or ``None``."""
    max_minutes = run.config.max_minutes
    out_of_time = max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes
    if run.world > 1:  # every rank stops after the same step, or the others would hang
        flags = torch.tensor([bool(stop.signal), out_of_time], device=run.device).float()
        out_of_time = bool(_all_reduce_sum(flags, run.world)[1])
        if flags[0] and not stop.signal:
            stop.signal = "SIGTERM"  # another rank was asked to stop
    return stop.signal or ("max_minutes" if out_of_time else None)


def _log(run: _Run, record: dict) -> None:
    """One line of ``metrics.jsonl`` (rank 0 writes)."""
    if run.rank == 0:
        with open(run.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _evaluate(run: _Run) -> Optional[dict]:
    """Rank 0 evaluates (:func:`mmgpt.evaluate.evaluate_splits`) and logs it; others: None."""
    if run.rank != 0:
        return None
    result = run.evaluate_fn(run.model, run.tokenizer, run.datasets, run.device, run.collate)
    _log(run, {"kind": "eval", "step": run.step, **result})
    return result


def _save(run: _Run) -> None:
    """The checkpoint of step ``run.step`` (rank 0 writes), once the losses are known finite."""
    _check_finite(run)
    if run.rank == 0:
        step, config, model_config = run.step, run.config, run.model_config
        model, optimizer, scaler, tokenizer = run.model, run.optimizer, run.scaler, run.tokenizer
        ckpt_path = run.ckpt_path
        save_atomic({"format": CHECKPOINT_FORMAT, "version": 1, "step": step,
                     "train_config": config_dict(config),
                     "model_config": config_dict(model_config),
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "tokenizer": tokenizer.to_dict()},
                    ckpt_path)


def _truncate_metrics(path: str, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint we resume from). A last
    line cut short by a kill is dropped too; a damaged line elsewhere is an error."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and not line.endswith("\n"):
                break  # a write cut short by a kill
            raise ValueError(f"train: {path} line {n} is not JSON; the metrics file is "
                             f"damaged (repair or delete that line to resume)") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"train: {path} line {n} has no step number; the metrics file is "
                             f"damaged (repair or delete that line to resume)")
        if record["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(kept)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: Sequence[str]) -> dict:
    """``["steps=500", "model.dim=64"]`` -> ``{"steps": 500, "model": {"dim": 64}}`` (values
    are read as JSON where they parse, else kept as strings)."""
    out: dict = {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects name=value, got {pair!r}")
        name, value = pair.split("=", 1)
        if name.startswith("model."):
            out.setdefault("model", {})[name[len("model."):]] = _parse_value(value)
        elif name in fields:
            out[name] = _parse_value(value)
        else:
            raise ValueError(f"--set: unknown field {name!r}; TrainConfig has {sorted(fields)} "
                             f"(and model.<field> for the model)")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmgpt.train",
                                     description="Train a MultimodalGPT on the shapes scenes, "
                                                 "or on a folder of your own images.")
    parser.add_argument("--preset", default=None,
                        help=f"one of {sorted(PRESETS)} (default cpu, or folder with --data; a "
                             f"resumed run without --preset continues with the settings it was "
                             f"started with)")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="train on this folder of images (index.jsonl, index.json, or its own "
                             "train/test files; see mmgpt.data.FolderDataset) instead of the "
                             "shapes scenes; the same as --set data=PATH")
    parser.add_argument("--out", required=True, help="output folder (checkpoint, metrics)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--auto-resume", action="store_true",
                        help="continue the run in --out if it holds a checkpoint, else start "
                             "it (for torchrun --max-restarts, which reruns the same command)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a TrainConfig field, e.g. steps=500 or model.dim=64")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    ckpt_path = os.path.join(args.out, CHECKPOINT)
    resuming = args.resume or (args.auto_resume and os.path.exists(ckpt_path))
    try:
        overrides = parse_overrides(args.set)
        if args.data is not None:
            overrides["data"] = args.data
        if resuming and args.preset is None:  # the run's own settings, and what --set changes
            values = config_dict(config_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path))
            model = dict(values.pop("model"), **overrides.pop("model", {}))
            config = TrainConfig(**dict(values, **overrides, model=model))
        else:
            config = TrainConfig.from_preset(args.preset or ("folder" if args.data else "cpu"), **overrides)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    try:
        resume = "auto" if args.auto_resume else args.resume
        result = train(config, args.out, resume=resume, progress=not args.no_progress)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        parser.error(str(err))
    except FloatingPointError as err:
        print(f"python -m mmgpt.train: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # an unwritable --out, a full disk
        print(f"python -m mmgpt.train: {args.out}: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items()}, indent=1))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return {"SIGINT": 130, "SIGTERM": 143}.get(result["interrupted"], 0)


if __name__ == "__main__":
    sys.exit(main())
