"""mmgpt: build a GPT-4V-style multimodal language model from scratch.

Each module is one idea of the book, and the chapter that builds it checks it against PyTorch:

===================  ===================================================  =========
module               what it holds                                        chapter
===================  ===================================================  =========
``mmgpt.conv``       2-D convolution (``conv2d``, ``Conv2d``)               01
``mmgpt.pooling``    max, average and adaptive average pooling             02
``mmgpt.cnn``        ``ResidualBlock``, ``SmallCNN``, ``receptive_field``   02
``mmgpt.patches``    patch sequences, ``PatchEmbed``, position embeddings  03
``mmgpt.tokenizer``  byte-level BPE tokenizer with special tokens         04
``mmgpt.data``       shapes scenes, digit strings, your own folder;       04
                     batching, baselines
``mmgpt.attention``  attention, masks, ``MultiHeadAttention``, KV cache  05-06
``mmgpt.loss``       cross-entropy (classes last), log-sum-exp, CLIP loss  09
``mmgpt.utils``      seeding, device choice, autocast dtype, atomic save   all
``mmgpt.book``       helpers for reading the book (show_source)            all
===================  ===================================================  =========
"""
from . import attention, book, cnn, conv, data, loss, patches, pooling, tokenizer, utils
from .book import show_source
from .utils import get_device, seed_everything, setup

__version__ = "0.1.0"

__all__ = [
    "attention",
    "book",
    "cnn",
    "conv",
    "data",
    "loss",
    "patches",
    "pooling",
    "tokenizer",
    "utils",
    "show_source",
    "setup",
    "seed_everything",
    "get_device",
    "__version__",
]
