"""``python -m mmgpt.evaluate RUN``: the accuracies of :mod:`mmgpt.evaluate` for a trained
run, read from its checkpoint, as a table (or JSON).

    python -m mmgpt.evaluate runs/cpu                 # evaluate the run's checkpoint
    python -m mmgpt.evaluate runs/cpu --size 2000     # on more held-out scenes

The command line opens what :mod:`mmgpt.train` wrote (its checkpoint, its config, its
data splits), so it sits on top of both modules: ``mmgpt.train`` uses ``mmgpt.evaluate``,
and nothing in ``mmgpt.evaluate`` itself uses ``mmgpt.train``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from ..data import Collate
from ..train import (CHECKPOINT, build_datasets, config_from_checkpoint, load_checkpoint,
                     model_from_checkpoint)
from ..utils import get_device
from . import evaluate_splits, format_table


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmgpt.evaluate",
                                     description="Evaluate a trained run on held-out scenes.")
    parser.add_argument("run", help="a run folder (holding checkpoint.pt) or a checkpoint file")
    parser.add_argument("--size", type=int, default=None, help="held-out scenes per split")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    path = os.path.join(args.run, CHECKPOINT) if os.path.isdir(args.run) else args.run
    if args.size is not None and args.size < 1:
        parser.error(f"--size must be a positive int, got {args.size}")
    try:
        ckpt = load_checkpoint(path)
        config = config_from_checkpoint(ckpt, path)
        model, tokenizer = model_from_checkpoint(ckpt)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if args.size is not None:
        config.eval_size = args.size
    try:
        device = get_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    model.to(device)
    collate = Collate(tokenizer, task="auto", max_length=model.config.context_length)
    result = evaluate_splits(model, tokenizer, build_datasets(config), device, collate)
    result["step"] = ckpt["step"]
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
