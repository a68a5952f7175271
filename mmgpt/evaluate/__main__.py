"""``python -m mmgpt.evaluate RUN``: the accuracies of :mod:`mmgpt.evaluate` for a trained
run, read from its checkpoint, as a table (or JSON).

    python -m mmgpt.evaluate runs/cpu                 # evaluate the run's checkpoint
    python -m mmgpt.evaluate runs/cpu --size 2000     # on more held-out scenes
    python -m mmgpt.evaluate runs/mine --data other   # a run on a folder, on another folder

The command line evaluates what :mod:`mmgpt.train` wrote (its checkpoint, its config, its
data splits) with :func:`mmgpt.train.evaluate_run`, so it sits on top of both modules:
``mmgpt.train`` uses ``mmgpt.evaluate``, and nothing in ``mmgpt.evaluate`` itself uses
``mmgpt.train``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from ..train import evaluate_run
from ..utils import get_device
from . import format_table


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmgpt.evaluate",
                                     description="Evaluate a trained run on held-out scenes, or on a "
                                                 "folder of images (--data).")
    parser.add_argument("run", help="a run folder (holding checkpoint.pt) or a checkpoint file")
    parser.add_argument("--size", type=int, default=None, help="held-out scenes per split")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="evaluate on this folder (its test.jsonl/test.json if it has one, else "
                             "its whole index; the run's own folder: its held-out side), with the "
                             "run's tokenizer and the baselines of the run's training data")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.size is not None and args.size < 1:
        parser.error(f"--size must be a positive int, got {args.size}")
    try:
        result, _ = evaluate_run(args.run, args.size, get_device(args.device), data=args.data)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
