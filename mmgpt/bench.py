"""How fast does a preset train here? Samples/s, tokens/s and, on known GPUs, MFU.

    python -m mmgpt.bench --preset cpu
    python -m mmgpt.bench --preset gpu --steps 30

Two speeds, measured apart, because either can be the one that limits a run:

* **the training step**: ``--steps`` calls of :func:`mmgpt.train.train_step`, the very step
  ``train`` takes (forward under autocast, loss, backward through the gradient scaler,
  clipping, AdamW), on fixed batches already on the device, after ``--warmup`` untimed ones;
* **the data pipeline**: the run's own DataLoader (renderer, or the pool of
  ``render_once``, then tokenising and padding) with the workers the run would start, on
  the CPU, for ``--data-batches`` batches.

``data_over_step`` is how many steps' worth of samples the pipeline makes in the time the
device trains one: below 1 the device waits for the CPU.

**MFU** (model FLOPs utilisation) is the share of the device's peak the training step
achieves: ``6 * parameters * tokens`` FLOPs per step for the dense layers (2 forward and 4
backward per weight and token), plus attention's ``12 * layers * dim * positions`` per token,
plus the image encoder's convolutions (counted with forward hooks, times 3), divided by the
time and by the peak in :data:`PEAK_TFLOPS` for the device's name (dense bf16/fp16 tensor-core
peak; unknown devices and CPUs report no MFU).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from typing import Optional, Sequence

import torch
from torch import nn

from .data import Collate, RenderedPool
from .model import MultimodalGPT, MultimodalGPTConfig
from .train import (PRESETS, TrainConfig, amp_dtype, build_datasets, build_tokenizer, lr_at,
                    make_loader, make_optimizer, parse_overrides, step_indices, train_mode,
                    train_step, usable_workers)
from .utils import get_device

__all__ = ["PEAK_TFLOPS", "peak_tflops", "conv_flops", "step_flops", "data_speed", "bench",
           "main"]

# Dense 16-bit tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, keyed
# by the words of the name the card reports (torch.cuda.get_device_name, lower-cased); the
# first entry whose words are all in the name wins, so the more specific come first. An H100
# SXM reports "NVIDIA H100 80GB HBM3", a PCIe card "NVIDIA H100 PCIe", a T4 "Tesla T4".
PEAK_TFLOPS = (
    (("h200", "nvl"), 836.0), (("h200",), 989.0),
    (("h100", "nvl"), 835.0), (("h100", "pcie"), 756.0), (("h100",), 989.0),
    (("a100",), 312.0),
    (("a10g",), 70.0),  # AWS's A10 variant: no NVIDIA data sheet; the figure usually quoted
    (("a10",), 125.0), (("l40s",), 362.0), (("l4",), 121.0), (("v100",), 125.0),
    (("t4",), 65.0), (("4090",), 165.2), (("3090",), 71.0),
)


def peak_tflops(device: torch.device, name: Optional[str] = None) -> Optional[float]:
    """The 16-bit peak of ``device`` (or of a card called ``name``) from
    :data:`PEAK_TFLOPS`, or ``None`` for a CPU or a card the table does not know."""
    if name is None:
        if device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(device)
    words = name.lower()
    for keys, peak in PEAK_TFLOPS:
        if all(k in words for k in keys):
            return peak
    return None


def conv_flops(model: MultimodalGPT, images: torch.Tensor) -> int:
    """Forward FLOPs of the image encoder's convolutions and linear layers for one batch."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        weight = module.weight
        if weight.dim() == 4:  # conv: 2 * k*k*c_in/groups per output element
            total += 2 * output.numel() * weight[0].numel()
        else:
            total += 2 * output.numel() * weight.shape[1]

    handles = [m.register_forward_hook(hook) for m in model.encoder.modules()
               if hasattr(m, "weight") and isinstance(m.weight, torch.Tensor)
               and m.weight is not None and m.weight.dim() in (2, 4)
               and not isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))]
    with torch.no_grad():
        model.encoder(images)
    for h in handles:
        h.remove()
    return total


def step_flops(model: MultimodalGPT, images: torch.Tensor, input_ids: torch.Tensor) -> int:
    """Training FLOPs of one step (see the module docstring)."""
    c = model.config
    B, T = input_ids.shape
    positions = T + (model.num_image_tokens if c.fusion == "prefix" else 0)
    decoder_params = sum(p.numel() for p in model.decoder.parameters())
    dense = 6 * decoder_params * B * positions
    attention = 12 * c.num_layers * c.dim * positions * positions * B
    return dense + attention + 3 * conv_flops(model, images)


def data_speed(config: TrainConfig, collate: Collate, batches: int = 20,
               workers: Optional[int] = None) -> dict:
    """Samples/s of the run's data pipeline on the CPU: its DataLoader (with the workers it
    would start, or ``workers``) for ``batches`` batches, after the first (which pays for
    starting the workers). With ``render_once`` the pool is rendered first, untimed, and
    how long that took is reported apart."""
    workers = usable_workers(config.num_workers) if workers is None else workers
    dataset = build_datasets(config)["train"]
    render_seconds = None
    if config.render_once:
        t0 = time.perf_counter()
        dataset = RenderedPool(dataset, num_workers=workers)
        render_seconds = time.perf_counter() - t0
    loader = iter(make_loader(config, dataset, collate, workers=workers))
    next(loader)
    t0 = time.perf_counter()
    done = 0
    for _ in range(batches):
        try:
            done += len(next(loader)["family"])
        except StopIteration:
            break
    seconds = time.perf_counter() - t0
    return {"data_workers": workers, "data_samples_per_s": done / max(seconds, 1e-9),
            "render_once_seconds": render_seconds}


def bench(config: TrainConfig, steps: int = 20, warmup: int = 5, device=None,
          data_batches: int = 20) -> dict:
    """Time ``steps`` training steps of ``config`` (:func:`mmgpt.train.train_step`) and,
    apart, ``data_batches`` batches of its data pipeline (0: skip); returns both speeds,
    their ratio and, on known GPUs, MFU."""
    device = get_device(device or (None if config.device == "auto" else config.device))
    tokenizer = build_tokenizer(config)
    model_config = MultimodalGPTConfig.for_tokenizer(tokenizer, image_size=config.image_size,
                                                     **config.model)
    torch.manual_seed(config.seed)
    model = MultimodalGPT(model_config).to(device)
    optimizer = make_optimizer(model, config)
    net = torch.compile(model) if config.compile else model
    amp = amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    data = build_datasets(config)["train"]
    collate = Collate(tokenizer, task="auto", max_length=model_config.context_length)
    batches = [collate([data[i] for i in step_indices(s, config)]) for s in range(4)]
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
               for b in batches]
    train_mode(model, config.freeze)

    def one_step(s):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(s, config)
        train_step(net, batches[s % len(batches)], optimizer, scaler, autocast, config.grad_clip)

    for s in range(warmup):
        one_step(s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        one_step(s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / steps
    flops = sum(step_flops(model, b["images"], b["input_ids"]) for b in batches) / len(batches)
    tokens = sum(b["attention_mask"].sum().item() for b in batches) / len(batches)
    peak = peak_tflops(device)
    result = {"preset": config.preset, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "amp": str(amp).replace("torch.", ""),
              "parameters": model.num_parameters(), "batch_size": config.batch_size,
              "seconds_per_step": seconds, "samples_per_s": config.batch_size / seconds,
              "tokens_per_s": tokens / seconds, "tflops": flops / seconds / 1e12,
              "mfu": (flops / seconds / 1e12 / peak) if peak else None}
    if data_batches:
        result.update(data_speed(config, collate, data_batches))
        result["data_over_step"] = result["data_samples_per_s"] / result["samples_per_s"]
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmgpt.bench",
                                     description="Training speed of a preset on this machine.")
    parser.add_argument("--preset", default="cpu", help=f"one of {sorted(PRESETS)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data-batches", type=int, default=20,
                        help="batches of the data pipeline to time (0: skip it)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.data_batches < 0:
        parser.error(f"--steps must be >= 1, --warmup and --data-batches >= 0, got "
                     f"{args.steps}, {args.warmup}, {args.data_batches}")
    try:
        config = TrainConfig.from_preset(args.preset, **parse_overrides(args.set))
    except ValueError as err:
        parser.error(str(err))
    try:
        result = bench(config, args.steps, args.warmup, args.device, args.data_batches)
    except ValueError as err:  # a device that is not there, a model that cannot be built
        parser.error(str(err))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
