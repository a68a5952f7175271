"""mmgpt: build a GPT-4V-style multimodal language model from scratch.

Each module is one idea of the book, and the chapter that builds it checks it against PyTorch:

=====================  =============================================================  =======
module                 what it holds                                                  chapter
=====================  =============================================================  =======
``mmgpt.conv``         2-D convolution (``conv2d``, ``Conv2d``)                       01
``mmgpt.pooling``      max, average and adaptive average pooling                      02
``mmgpt.cnn``          ``ResidualBlock``, ``SmallCNN``, ``receptive_field``           02
``mmgpt.patches``      patch sequences, ``PatchEmbed``, position embeddings           03
``mmgpt.tokenizer``    byte-level BPE tokenizer with special tokens                   04
``mmgpt.data``         shapes scenes, digit strings, your own folder; batching        04
``mmgpt.attention``    attention, masks, ``MultiHeadAttention``, KV cache             05-06
``mmgpt.transformer``  ``LayerNorm``, ``MLP``, pre-norm ``Block``, ``GPT``, sampling  07
``mmgpt.fusion``       prefix, gated cross-attention and late fusion                  08
``mmgpt.model``        ``MultimodalGPT``: image encoder, projector, fusion, decoder   08
``mmgpt.loss``         cross-entropy (classes last), log-sum-exp, CLIP loss           09
``mmgpt.train``        the training loop: presets, resume, fine-tuning, DDP           10, 13
``mmgpt.evaluate``     accuracy per question family and split, baselines, plots       10-11
``mmgpt.bench``        training speed: samples/s, tokens/s, MFU                       11, 13
``mmgpt.ask``          a trained model's caption of an image file, or its answer      --
``mmgpt.viz``          attention maps and rollout, object share, confusion matrices   12
``mmgpt.utils``        seeding, device choice, autocast dtype, atomic save            all
``mmgpt.book``         helpers for reading the book (show_source)                     all
=====================  =============================================================  =======

``mmgpt.train``, ``mmgpt.evaluate``, ``mmgpt.bench`` and ``mmgpt.ask`` are also command-line
programs (``python -m mmgpt.train --help``), so ``import mmgpt`` leaves them to be imported by name.
"""
from . import (
    attention,
    book,
    cnn,
    conv,
    data,
    fusion,
    loss,
    model,
    patches,
    pooling,
    tokenizer,
    transformer,
    utils,
    viz,
)
from .book import show_source
from .utils import get_device, seed_everything, setup

__version__ = "0.2.0"

__all__ = [
    "attention",
    "book",
    "cnn",
    "conv",
    "data",
    "fusion",
    "loss",
    "model",
    "patches",
    "pooling",
    "tokenizer",
    "transformer",
    "utils",
    "viz",
    "show_source",
    "setup",
    "seed_everything",
    "get_device",
    "__version__",
]
