"""The book's data: everything is generated or ships inside an installed package.

Every dataset returns samples as dicts with ``image`` (a float tensor ``(3, H, W)`` in
``[0, 1]``) and text: ``caption``, ``question``, ``answer``, ``family``. ``describe(i)``
gives the same dict without the pixels, which is what the baselines read.

=================================  ===========================================================
``ShapesDataset``                  coloured shapes with captions and eight question families;
                                   a ``"heldout"`` split of unseen colour-shape pairs
                                   (:mod:`mmgpt.data.shapes`)
``DigitStringsDataset``            2-4 real handwritten digits (scikit-learn's) per image,
                                   read aloud and counted (:mod:`mmgpt.data.digits`)
``FolderDataset``                  your own images with a JSON-lines index or a LLaVA-style
``split_by_image``                 conversation list; a split held out by image
                                   (:mod:`mmgpt.data.folder`)
``Collate`` / ``make_collate``     samples -> padded token ids with the ``<image>`` slot,
``collate``                        attention and loss masks (:mod:`mmgpt.data.batching`)
``RenderedPool``                   a data set rendered once and kept in memory, for GPUs
                                   the renderer cannot feed (:mod:`mmgpt.data.pool`)
``majority_baseline``              the bars to beat: answer without the image
``text_only_baseline``             (:mod:`mmgpt.data.baselines`)
``caption_corpus``                 text to train the tokenizer and a tiny language model
=================================  ===========================================================
"""
from .baselines import caption_corpus, majority_baseline, text_only_baseline
from .batching import IGNORE_INDEX, Collate, collate, make_collate
from .common import NUMBER_WORDS, Rng
from .digits import DIGIT_FAMILIES, DigitString, DigitStringsDataset, load_digit_sources
from .folder import FolderDataset, load_image, split_by_image
from .pool import RenderedPool
from .shapes import (BACKGROUND, COLORS, DEFAULT_HELDOUT, FAMILIES, SHAPES, Scene, ShapeObject,
                     ShapesDataset, render_scene)

__all__ = [
    "ShapesDataset", "Scene", "ShapeObject", "render_scene", "COLORS", "SHAPES", "BACKGROUND",
    "FAMILIES", "DEFAULT_HELDOUT",
    "DigitStringsDataset", "DigitString", "DIGIT_FAMILIES", "load_digit_sources",
    "FolderDataset", "load_image", "split_by_image",
    "RenderedPool",
    "Collate", "make_collate", "collate", "IGNORE_INDEX",
    "majority_baseline", "text_only_baseline", "caption_corpus",
    "NUMBER_WORDS", "Rng",
]
