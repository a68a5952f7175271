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
achieves: the FLOPs of the step's matrix products (:func:`step_flops`, the count PyTorch's
``FlopCounterMode`` makes of one forward and backward pass: ``tests/test_bench.py``), divided
by the time and by the peak in :data:`PEAK_TFLOPS` for the device's name (dense bf16/fp16
tensor-core peak; unknown devices and CPUs report no MFU). Elementwise work (layer norms,
softmax, the optimizer) is not counted, as in every MFU.
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

from .conv import Conv2d
from .data import Collate, RenderedPool
from .fusion import CrossAttentionFusion, PrefixFusion
from .model import MultimodalGPT, MultimodalGPTConfig
from .train import (PRESETS, TrainConfig, amp_dtype, build_datasets, build_tokenizer, lr_at,
                    make_loader, make_optimizer, parse_overrides, step_indices, train_mode,
                    train_step, usable_workers)
from .utils import get_device

__all__ = ["PEAK_TFLOPS", "peak_tflops", "encoder_flops", "step_flops", "data_speed", "bench",
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


def encoder_flops(model: MultimodalGPT, images: torch.Tensor) -> int:
    """Training FLOPs of the image encoder's convolutions and linear layers on ``images``.

    Each layer's forward product costs ``2 * output.numel() * fan_in`` (a multiply and an
    add per weight and output). The backward pass repeats it once for the gradient of the
    weight and once for the gradient of the input, but the layer that reads the images has
    no input gradient to compute (nothing upstream learns): 3 times the forward for every
    layer but that one, 2 times for it. Forward hooks see the output sizes, which depend on
    the image size and the encoder's strides. The encoder runs in eval mode here, so batch
    norm's running statistics are left as they were.
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        fan_in = module.weight[0].numel()  # in_features, or k*k*in_channels/groups
        passes = 1 + inputs[0].requires_grad + module.weight.requires_grad
        total += passes * 2 * output.numel() * fan_in

    layers = [m for m in model.encoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d, Conv2d))]
    handles = [m.register_forward_hook(hook) for m in layers]
    modes = {m: m.training for m in model.encoder.modules()}
    try:
        model.encoder.eval()
        with torch.enable_grad():  # so that inputs[0].requires_grad tells the first layer
            model.encoder(images)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return total


def _weights(*modules: nn.Module) -> int:
    """Weights of the linear layers in ``modules``: the multiply-adds per position."""
    return sum(m.weight.numel() for module in modules for m in module.modules()
               if isinstance(m, nn.Linear))


def step_flops(model: MultimodalGPT, images: torch.Tensor, input_ids: torch.Tensor) -> int:
    """FLOPs of the matrix products in one training step of ``model`` on this batch.

    A linear layer with ``W`` weights costs ``2 * W`` FLOPs per position forward (a
    multiply and an add per weight) and ``4 * W`` backward (the gradients of its input and
    of its weights): ``6 * W`` per position, the ``6 * parameters * tokens`` rule, applied
    to the layers that run at each position rather than to the parameter count (embedding
    lookups, position tables, layer norms and biases are no matrix products; the head runs
    on the text positions only). Attention adds two products per block, the scores
    ``q @ k.T`` and the weighted values ``p @ v``, ``2 * L * L * dim`` FLOPs each per
    sequence forward, 3 times that with the backward. They are counted over the full
    ``L x L`` square, not its causal half: the kernels compute the whole square and mask it
    (PyTorch's FlopCounterMode counts it so too). The bench trains every parameter.
    """
    c, decoder = model.config, model.decoder
    B, T = input_ids.shape
    N, d = model.num_image_tokens, c.dim
    # Positions the blocks read: prefix fusion splices the N image tokens in place of the
    # <image> placeholder (once: T + N - 1; or N placeholders in a row: T).
    L = T
    if isinstance(model.fusion, PrefixFusion):
        L = T + N - int((input_ids[0] == model.fusion.image_token_id).sum())
    # The blocks' linear layers (q, k, v, out, MLP) at every position.
    blocks = 6 * _weights(decoder.blocks) * B * L
    # Attention's two L x L products in every block.
    attention = 3 * 2 * (2 * L * L * d) * B * len(decoder.blocks)
    # The head (tied to the token embedding or not) at the T text positions.
    head = 6 * decoder.head.weight.numel() * B * T
    # Cross fusion's gated layers: queries, output and MLP at the T text positions, keys
    # and values at the N image tokens, and the T x N attention between them.
    cross = 0
    if isinstance(model.fusion, CrossAttentionFusion):
        for layer in model.fusion.layers:
            image_side = _weights(layer.attn.k_proj, layer.attn.v_proj)
            text_side = _weights(layer) - image_side
            cross += 6 * (text_side * T + image_side * N) * B + 3 * 2 * (2 * T * N * d) * B
    return encoder_flops(model, images) + blocks + attention + head + cross


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
    batches = [collate([data[i] for i in step_indices(s, config, size=len(data))]) for s in range(4)]
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
