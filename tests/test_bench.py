"""mmgpt.bench.step_flops, the FLOPs behind bench's TFLOP/s and MFU, against PyTorch's own
count: ``torch.utils.flop_counter.FlopCounterMode`` around one training step (forward, loss,
backward) of a small model.

The models use the book's kernels (``fused=False``): then every FLOP the step spends in a
matrix product is an ``aten.mm``/``bmm``/``addmm`` call the counter sees, attention
included (the CPU's fused attention kernel is not in the counter's table, so a fused model
would hide its attention from it). MFU counts matrix-product FLOPs only, as the counter does
(elementwise work, layer norms and softmax are not in it), so the two must agree exactly.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmgpt.bench import step_flops
from mmgpt.fusion import FUSIONS
from mmgpt.model import MultimodalGPT, MultimodalGPTConfig

V, IMAGE = 60, 59  # a small vocabulary whose last id is the <image> placeholder
SMALL = dict(vocab_size=V, image_token_id=IMAGE, context_length=16, dim=32, num_layers=2,
             num_heads=2, cnn_widths=(8, 16, 16), fused=False)

# Measured on this suite's models (mmgpt at commit 872b034, before the fix): step_flops is
# 10-18% above the counter for prefix and late fusion and 13-37% below it for cross fusion,
# because it
#   1. counts every decoder parameter 6 times per position: the position table, layer norms
#      and biases (no matrix product), and the tied embedding/head at every position, where
#      the head runs on the T text positions only (prefix fusion gathers them first);
#   2. gives prefix fusion T + N positions where the decoder reads T + N - 1 (the N image
#      tokens replace the one <image> placeholder);
#   3. leaves out cross fusion's gated cross-attention layers (model.fusion) altogether;
#   4. counts the encoder's first layer 3 times its forward, but no gradient flows into the
#      images: forward and weight gradient only, 2 times;
#   5. counts a learned image position table (image_pos="learned", a 2-D ``weight``) as a
#      linear layer in conv_flops.
KNOWN_GAP = pytest.mark.xfail(strict=True, reason="bench.step_flops miscounts: see the list "
                                                  "above KNOWN_GAP in tests/test_bench.py")

CASES = [pytest.param(dict(fusion=f, encoder=e), id=f"{f}-{e}", marks=KNOWN_GAP)
         for f in FUSIONS for e in ("cnn", "patch")]
CASES.append(pytest.param(dict(fusion="prefix", image_pos="learned", projector="mlp"),
                          id="prefix-learned-positions-mlp", marks=KNOWN_GAP))


def _step(overrides, B=3, T=10, seed=0):
    torch.manual_seed(seed)
    model = MultimodalGPT(MultimodalGPTConfig(**dict(SMALL, **overrides)))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, IMAGE, (B, T), generator=g)
    ids[:, 0], ids[:, 1] = 1, IMAGE  # <bos> <image> ...
    return model, torch.rand(B, 3, 32, 32, generator=g), ids


def _counted(model, images, ids) -> int:
    """FLOPs PyTorch counts in one training step of ``model`` on this batch."""
    with FlopCounterMode(display=False) as counter:
        _, loss = model(images, ids, ids)  # labels = the ids: every next token is scored
        loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("overrides", CASES)
def test_step_flops_is_what_pytorch_counts_in_a_training_step(overrides):
    for B, T in ((3, 10), (2, 16)):  # the count must follow the batch's shape
        model, images, ids = _step(overrides, B, T)
        assert step_flops(model, images, ids) == _counted(model, images, ids), (B, T)


def test_the_books_kernels_spend_their_flops_in_products_the_counter_sees():
    # The premise of the comparison above: with fused=False the convolutions, attention and
    # linear layers are all plain matrix products (attention's are the batched ``bmm``).
    for encoder in ("cnn", "patch"):
        model, images, ids = _step(dict(fusion="prefix", encoder=encoder))
        with FlopCounterMode(display=False) as counter:
            model(images, ids, ids)[1].backward()
        ops = {str(op) for op in counter.get_flop_counts()["Global"]}
        assert ops == {"aten.mm", "aten.bmm", "aten.addmm"}, ops
