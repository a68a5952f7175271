"""Record a training run the way the book keeps its runs: what ran, where, and how well.

    python -m mmgpt.record --preset gpu --out runs/gpu          # train, then evaluate
    python -m mmgpt.record --preset gpu --out runs/gpu --resume # after an interruption
    python -m mmgpt.record --finish runs/cpu-full --out runs/cpu-full-record \\
        --command "python -m mmgpt.train --preset cpu-full --out runs/cpu-full"

The first form trains a preset with :func:`mmgpt.train.train` (the same run as
``python -m mmgpt.train`` with those arguments) and writes into ``--out``, beside the
checkpoint and ``metrics.jsonl``:

* ``environment.json``: the machine (GPU name, compute capability and the autocast dtype
  the code picks; or the CPU's name, its cores and torch's threads), torch, CUDA, Python,
  the date, the commit, and the exact command;
* ``train_config.json``: the run's :class:`~mmgpt.train.TrainConfig`, every field;
* ``bench.json``: :func:`mmgpt.bench.bench` of the preset on this machine (the training
  step and the data pipeline, timed apart);
* ``wall.json``: the training's wall time, evaluations included, summed over resumes;
* ``final.json``: :func:`mmgpt.train.evaluate_run` (the run's checkpoint through
  :func:`mmgpt.evaluate.evaluate_splits`) on ``--eval-size`` held-out scenes
  per split, larger than the run's own evaluations.

``--finish RUN`` records a run that ``python -m mmgpt.train`` already trained: it evaluates
``RUN``'s checkpoint and copies its metrics, and the command is the one you give.

To publish a record in the book, copy its JSON files (not the checkpoint) into
``mmgpt/results/<name>/``, which ships with the package, and re-execute Chapter 11.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence, Tuple

import torch

__all__ = ["environment", "finish", "main"]

FILES = ("environment.json", "train_config.json", "bench.json", "wall.json", "metrics.jsonl",
         "final.json")


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, command: str, commit: Optional[str] = None) -> dict:
    """What a run ran on, as a JSON-ready dict."""
    from . import __version__
    from .utils import autocast_dtype

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    env = {
        "device": device.type,
        "cpu": _cpu_name(),
        "cpu_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mmgpt": __version__,
        "commit": commit or _git_commit(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": command,
    }
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        env.update(gpu=torch.cuda.get_device_name(device), gpu_count=torch.cuda.device_count(),
                   compute_capability=f"{major}.{minor}", cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory
                                        / 2**30, 1))
    env["autocast"] = str(autocast_dtype(device)).replace("torch.", "")
    return env


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _final(run: str, eval_size: int, device) -> Tuple[dict, dict]:
    """The run's final evaluation (:func:`mmgpt.train.evaluate_run`) and its config."""
    from .model import config_dict
    from .train import evaluate_run

    result, config = evaluate_run(run, eval_size, device)
    return dict(result, eval_size=eval_size), config_dict(config)


def finish(run: str, out: str, command: str, eval_size: int = 2000, device=None,
           commit: Optional[str] = None, wall_seconds: Optional[float] = None,
           bench_steps: int = 0) -> dict:
    """Record a run already trained in ``run`` into ``out``: environment, metrics, final
    evaluation (and the wall time, if known; and, with ``bench_steps``, the speed of the
    run's own config on this machine). Returns the final evaluation."""
    from .bench import bench
    from .train import TrainConfig
    from .utils import get_device

    device = get_device(device)
    os.makedirs(out, exist_ok=True)
    final, train_config = _final(run, eval_size, device)
    _write_json(os.path.join(out, "environment.json"), environment(device, command, commit))
    _write_json(os.path.join(out, "train_config.json"), train_config)
    if bench_steps:
        config = TrainConfig(**dict(train_config, device=device.type))
        _write_json(os.path.join(out, "bench.json"), bench(config, steps=bench_steps,
                                                           device=device))
    if os.path.abspath(run) != os.path.abspath(out):
        shutil.copyfile(os.path.join(run, "metrics.jsonl"), os.path.join(out, "metrics.jsonl"))
    if wall_seconds is not None:
        _write_json(os.path.join(out, "wall.json"), {"train_wall_seconds": wall_seconds})
    _write_json(os.path.join(out, "final.json"), final)
    return final


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .bench import bench
    from .evaluate import format_table
    from .train import PRESETS, TrainConfig, parse_overrides, train
    from .utils import get_device

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m mmgpt.record",
                                     description="Train and record a run: environment, "
                                                 "speed, metrics, final evaluation.")
    parser.add_argument("--preset", default="gpu", help=f"one of {sorted(PRESETS)} (default gpu)")
    parser.add_argument("--out", required=True, help="the run's folder")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a TrainConfig field, as for mmgpt.train")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--eval-size", type=int, default=2000,
                        help="held-out scenes per split for the final evaluation (default 2000)")
    parser.add_argument("--bench-steps", type=int, default=30,
                        help="training steps bench times first (0: no bench.json)")
    parser.add_argument("--finish", metavar="RUN",
                        help="record a run python -m mmgpt.train already trained in RUN")
    parser.add_argument("--command", help="with --finish: the command that trained RUN")
    parser.add_argument("--commit", help="with --finish: the commit RUN was trained at "
                                         "(default: this checkout's)")
    parser.add_argument("--wall-seconds", type=float,
                        help="with --finish: RUN's training wall time, if you measured it")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.eval_size < 1 or args.bench_steps < 0:
        parser.error(f"--eval-size must be >= 1 and --bench-steps >= 0, got "
                     f"{args.eval_size}, {args.bench_steps}")
    if args.finish:
        if not args.command:
            parser.error("--finish needs --command: the command that trained the run")
        try:
            final = finish(args.finish, args.out, args.command, args.eval_size, args.device,
                           args.commit, args.wall_seconds, args.bench_steps)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
        print(format_table(final))
        return 0

    try:
        config = TrainConfig.from_preset(args.preset, **parse_overrides(args.set))
    except ValueError as err:
        parser.error(str(err))
    device = get_device(args.device or (None if config.device == "auto" else config.device))
    os.makedirs(args.out, exist_ok=True)
    command = "python -m mmgpt.record " + " ".join(shlex.quote(a) for a in argv)
    if not args.resume:
        if os.path.exists(os.path.join(args.out, "checkpoint.pt")):
            parser.error(f"{args.out} already holds a run; pass --resume or choose another folder")
        _write_json(os.path.join(args.out, "environment.json"), environment(device, command))
        if args.bench_steps:
            _write_json(os.path.join(args.out, "bench.json"),
                        bench(config, steps=args.bench_steps, device=device))
    wall_path = os.path.join(args.out, "wall.json")
    wall = 0.0
    if args.resume and os.path.exists(wall_path):
        with open(wall_path, encoding="utf-8") as f:
            wall = json.load(f)["train_wall_seconds"]
    try:
        result = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        parser.error(str(err))
    _write_json(wall_path, {"train_wall_seconds": wall + result["seconds"]})
    if result["interrupted"]:
        print(f"interrupted ({result['interrupted']}) at step {result['step']}: continue with "
              f"the same command and --resume", file=sys.stderr)
        return 130
    final, train_config = _final(args.out, args.eval_size, device)
    _write_json(os.path.join(args.out, "train_config.json"), train_config)
    _write_json(os.path.join(args.out, "final.json"), final)
    print(format_table(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
