"""How fast does a preset train here? Samples/s, tokens/s and, on known GPUs, MFU.

    python -m mmgpt.bench --preset cpu
    python -m mmgpt.bench --preset gpu --steps 30

Times ``--steps`` training steps (forward, backward, optimizer) on fixed batches, after
``--warmup`` untimed ones, with the preset's model, batch size, precision and device.
The data pipeline is left out (it is measured by ``mmgpt.data``'s tests): this is the
model's speed.

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
from typing import Optional, Sequence

import torch
from torch import nn

from .data import Collate
from .model import MultimodalGPT, MultimodalGPTConfig
from .train import (TrainConfig, _amp_dtype, build_datasets, build_tokenizer, make_optimizer,
                    parse_overrides, step_indices)
from .utils import get_device

__all__ = ["PEAK_TFLOPS", "peak_tflops", "conv_flops", "step_flops", "bench", "main"]

# Dense 16-bit tensor-core peaks (TFLOP/s) from the vendors' data sheets (no sparsity).
PEAK_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 756.0,
    "A100": 312.0, "L4": 121.0, "A10G": 125.0, "A10": 125.0, "V100": 125.0, "T4": 65.0,
    "RTX 4090": 165.0, "RTX 3090": 71.0,
}


def peak_tflops(device: torch.device) -> Optional[float]:
    """The 16-bit peak of ``device`` if its name is in :data:`PEAK_TFLOPS`, else ``None``."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "H100 SXM" before "H100"
        if key in name:
            return PEAK_TFLOPS[key]
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


def bench(config: TrainConfig, steps: int = 20, warmup: int = 5, device=None) -> dict:
    """Train ``steps`` timed steps of ``config``'s model; returns speeds and MFU."""
    device = get_device(device or (None if config.device == "auto" else config.device))
    tokenizer = build_tokenizer(config)
    model_config = MultimodalGPTConfig.for_tokenizer(tokenizer, image_size=config.image_size,
                                                     **config.model)
    torch.manual_seed(config.seed)
    model = MultimodalGPT(model_config).to(device)
    optimizer = make_optimizer(model, config)
    net = torch.compile(model) if config.compile else model
    amp = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    data = build_datasets(config)["train"]
    collate = Collate(tokenizer, task="auto", max_length=model_config.context_length)
    batches = [collate([data[i] for i in step_indices(s, config)]) for s in range(4)]
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
               for b in batches]

    def one_step(batch):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            _, loss = net(batch["images"], batch["input_ids"], batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for s in range(warmup):
        one_step(batches[s % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for s in range(steps):
        one_step(batches[s % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / steps
    flops = sum(step_flops(model, b["images"], b["input_ids"]) for b in batches) / len(batches)
    tokens = sum(b["attention_mask"].sum().item() for b in batches) / len(batches)
    peak = peak_tflops(device)
    return {"preset": config.preset, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "amp": str(amp).replace("torch.", ""),
            "parameters": model.num_parameters(), "batch_size": config.batch_size,
            "seconds_per_step": seconds, "samples_per_s": config.batch_size / seconds,
            "tokens_per_s": tokens / seconds, "tflops": flops / seconds / 1e12,
            "mfu": (flops / seconds / 1e12 / peak) if peak else None}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .train import PRESETS

    parser = argparse.ArgumentParser(prog="python -m mmgpt.bench",
                                     description="Training speed of a preset on this machine.")
    parser.add_argument("--preset", default="cpu", help=f"one of {sorted(PRESETS)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}")
    try:
        config = TrainConfig.from_preset(args.preset, **parse_overrides(args.set))
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(bench(config, args.steps, args.warmup, args.device), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
