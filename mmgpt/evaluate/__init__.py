"""How well does a trained MultimodalGPT answer? Accuracy per question family, with the bars
it must clear beside it.

    python -m mmgpt.evaluate runs/cpu                 # evaluate the run's checkpoint
    python -m mmgpt.evaluate runs/cpu --size 2000     # on more held-out scenes

An answer counts as right when the model, reading the prompt, would write exactly the answer's
tokens and then ``<eos>``. That is checked in one forward pass with the true answer fed in
(*teacher forcing*): greedy decoding writes the answer if and only if, at every answer
position, the most likely next token is the answer's next token. So the accuracy here is the
accuracy of greedy generation, at the cost of one forward pass per batch (the ``<image>``
placeholder, which generation never writes, is never the argmax here either).

:func:`evaluate_splits` reports, for each split of :func:`mmgpt.train.build_datasets`:

* ``test``: new scenes from the training distribution;
* ``heldout``: the compositional split (colour-shape pairs never seen in training);
* ``blank``: the test questions with a blank image (the background only): what the model
  answers from the question alone. It should fall to about the text-only baseline;
* ``caption``: exact match of the whole caption on test scenes;
* ``majority`` and ``text_only``: the data's own baselines (:mod:`mmgpt.data`).

For a folder of your own (``python -m mmgpt.train --data PATH``) there is no compositional
split and no separate caption score: ``test`` is the folder's held-out side, captions and
questions mixed as the folder has them, with captions as the family ``"caption"``; ``blank``
is its questions and captions with a blank image; the baselines are computed from the
folder's training side (or, when another folder is evaluated, from the run's training data).

    python -m mmgpt.evaluate runs/mine                # the held-out side of the run's folder
    python -m mmgpt.evaluate runs/mine --data other   # another folder (its test side, or all)

Imports run one way: :mod:`mmgpt.train` uses this package to evaluate during a run, and
this package's own modules use nothing of ``mmgpt.train``; the command line, which opens a
training run's checkpoint, is :mod:`mmgpt.evaluate.__main__`, on top of both.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Dict, Optional

import torch
from torch import Tensor

from ..data import BACKGROUND, Collate, majority_baseline, text_only_baseline

__all__ = ["exact_match", "accuracy_by_family", "evaluate_splits", "load_metrics",
           "plot_metrics", "RELATIONAL", "plot_families", "format_table"]

# The text-only baseline reads the questions of this many training samples.
BASELINE_SAMPLES = 20_000


def exact_match(logits: Tensor, input_ids: Tensor, loss_mask: Tensor,
                image_token_id: Optional[int] = None) -> Tensor:
    """``(B,)`` bool: for each sequence, does the argmax at every position before a token
    to predict equal that token? (Logits at ``t`` predict token ``t + 1``.) Given
    ``image_token_id``, that token is never the argmax, as it is never chosen by
    :meth:`~mmgpt.model.MultimodalGPT.generate`: then this is greedy generation's answer."""
    if image_token_id is not None:
        logits = logits.index_fill(-1, torch.tensor([image_token_id], device=logits.device),
                                   float("-inf"))
    predicted = logits[:, :-1].argmax(-1)
    wanted = loss_mask[:, 1:]
    return ((predicted == input_ids[:, 1:]) | ~wanted).all(-1) & wanted.any(-1)


@torch.no_grad()
def accuracy_by_family(model, dataset, collate: Collate, device, *, batch_size: int = 256,
                       blank: bool = False, task: Optional[str] = None) -> Dict[str, float]:
    """Exact-match accuracy per ``family`` over ``dataset`` (and ``"all"``). ``blank``
    replaces every image with the background colour; ``task="caption"`` scores captions."""
    was_training = model.training
    model.eval()
    if task is not None:
        collate = Collate(collate.tokenizer, task=task, image_tokens=collate.image_tokens,
                          max_length=collate.max_length)
    right: Dict[str, int] = defaultdict(int)
    total: Dict[str, int] = defaultdict(int)
    try:
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            batch = collate(samples)
            images = batch["images"]
            if blank:
                colour = torch.tensor(BACKGROUND, dtype=images.dtype) / 255
                images = colour[None, :, None, None].expand_as(images).contiguous()
            logits, _ = model(images.to(device), batch["input_ids"].to(device))
            ok = exact_match(logits.float().cpu(), batch["input_ids"], batch["loss_mask"],
                             model.config.image_token_id)
            families = ["caption"] * len(samples) if task == "caption" else batch["family"]
            for family, good in zip(families, ok.tolist()):
                right[family] += good
                total[family] += 1
    finally:
        model.train(was_training)
    out = {f: right[f] / total[f] for f in sorted(total)}
    out["all"] = sum(right.values()) / max(1, sum(total.values()))
    return out


def evaluate_splits(model, tokenizer, datasets: dict, device, collate: Collate) -> dict:
    """The accuracies of :mod:`this module <mmgpt.evaluate>`'s docstring, as one dict.
    ``datasets`` holds ``test``, and ``train`` for the baselines; the shapes scenes' also
    ``heldout`` (then captions are scored apart, on the test scenes); without ``train`` the
    text-only baseline is left out."""
    shapes = "heldout" in datasets
    result = {"test": accuracy_by_family(model, datasets["test"], collate, device)}
    if shapes:
        result["heldout"] = accuracy_by_family(model, datasets["heldout"], collate, device)
    result["blank"] = accuracy_by_family(model, datasets["test"], collate, device, blank=True)
    if shapes:
        result["caption"] = accuracy_by_family(model, datasets["test"], collate, device,
                                               task="caption")["all"]
    if "baselines" not in datasets:  # computed once per run, from text only
        datasets["baselines"] = {"majority": majority_baseline(datasets["test"])}
        if "train" in datasets:
            train = datasets["train"]
            train = train.dataset if hasattr(train, "dataset") else train
            datasets["baselines"]["text_only"] = text_only_baseline(_Head(train, BASELINE_SAMPLES),
                                                                    datasets["test"])
    result.update(datasets["baselines"])
    return result


class _Head:
    """The first ``n`` samples of a data set (for baselines computed from text alone)."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n = dataset, min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]

    def describe(self, i):
        return self.dataset.describe(i)


# --------------------------------------------------------------------------------------
# Metrics files
# --------------------------------------------------------------------------------------

def load_metrics(path) -> Dict[str, list]:
    """``metrics.jsonl`` (a file or a run folder) as ``{"train": [...], "eval": [...]}``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    out: Dict[str, list] = {"train": [], "eval": []}
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if n == len(lines) and not line.endswith("\n"):
                break  # the line a running (or killed) run is writing
            raise ValueError(f"load_metrics: {path} line {n} is not JSON: {err}") from None
        out.setdefault(record.get("kind", "train"), []).append(record)
    return out


def plot_metrics(metrics, ax=None, title: Optional[str] = None):
    """Training loss and held-out accuracy against the step, with the text-only bar."""
    import matplotlib.pyplot as plt

    if not isinstance(metrics, dict):
        metrics = load_metrics(metrics)
    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    train, evals = metrics["train"], metrics["eval"]
    ax[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax[0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    if evals:
        steps = [r["step"] for r in evals]
        for split, style in (("test", "-o"), ("heldout", "--s"), ("blank", ":^")):
            if split not in evals[-1]:  # a folder's runs have no compositional split
                continue
            ax[1].plot(steps, [r[split]["all"] for r in evals], style, ms=4, label=split)
        text_only = evals[-1].get("text_only", {})
        if text_only:
            bar = sum(text_only.values()) / len(text_only)
            ax[1].axhline(bar, color="grey", lw=1, label="text-only baseline")
        ax[1].set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02), title="answers")
        ax[1].legend(fontsize=8, loc="lower right")
    if title:
        ax[0].figure.suptitle(title)
    ax[0].figure.tight_layout()
    return ax


RELATIONAL = ("relation", "distance", "compare")


def plot_families(metrics, batch_size: int, ax=None, title: Optional[str] = None,
                  split: str = "test"):
    """Accuracy of each question family against the training samples seen: the relational
    families (:data:`RELATIONAL`, which need two objects at once) in solid lines, the others
    dashed, and each family's text-only baseline as a dot at the left edge."""
    import matplotlib.pyplot as plt

    if not isinstance(metrics, dict):
        metrics = load_metrics(metrics)
    evals = metrics["eval"]
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.6))
    samples = [r["step"] * batch_size for r in evals]
    families = [f for f in evals[-1][split] if f != "all"]
    text_only = evals[-1].get("text_only", {})
    for k, family in enumerate(sorted(families, key=lambda f: (f not in RELATIONAL, f))):
        color = plt.cm.tab10(k % 10)
        style = "-o" if family in RELATIONAL else "--"
        ax.plot(samples, [r[split][family] for r in evals], style, ms=3, lw=1.5 if
                family in RELATIONAL else 1, color=color, label=family)
        if family in text_only:
            ax.plot([0], [text_only[family]], "o", ms=4, color=color, alpha=0.6)
    ax.set(xlabel="training samples", ylabel=f"accuracy ({split})", ylim=(0, 1.02))
    ax.set_xlim(left=0)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------

def format_table(result: dict) -> str:
    """A plain-text table: one row per family, columns test / heldout / blank / baselines
    (those the result has)."""
    families = [f for f in result["test"] if f != "all"] + ["all"]
    cols = [c for c in ("test", "heldout", "blank", "majority", "text_only") if c in result]
    lines = [f"{'family':10s}" + "".join(f"{c:>11s}" for c in cols)]
    for f in families:
        cells = []
        for c in cols:
            value = result.get(c, {}).get(f)
            cells.append(f"{value:11.3f}" if value is not None else f"{'':>11s}")
        lines.append(f"{f:10s}" + "".join(cells))
    if "caption" in result:
        lines.append(f"caption exact match: {result['caption']:.3f}")
    return "\n".join(lines)
