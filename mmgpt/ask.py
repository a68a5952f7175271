"""Ask a trained model about an image: its caption, or its answer to a question.

    python -m mmgpt.ask runs/mine photo.jpg                        # the caption
    python -m mmgpt.ask runs/mine photo.jpg "what colour is the car?"

and in a notebook::

    from mmgpt.ask import ask, load_model
    ask("runs/mine", "photo.jpg")                                  # reads the run each call
    model, tokenizer = load_model("runs/mine")                     # or once, for many images
    ask(model, "photo.jpg", "what colour is the car?", tokenizer=tokenizer)

The image (any file Pillow reads, or a ``(3, H, W)`` tensor in ``[0, 1]``) is resized to the
model's ``image_size`` as the training data were (:func:`mmgpt.data.load_image`; a tensor
of another size is resized bilinearly). The prompt is the one the model was trained on
(:func:`mmgpt.model.prompt_ids`) and the answer is written greedily up to ``<eos>``
(:func:`mmgpt.model.generate_text`). The model is read with its own tokenizer, the one in its
checkpoint (:func:`mmgpt.train.load_run`); a model given as an object needs its tokenizer,
checked to be one with the model's vocabulary.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .data import load_image
from .model import MultimodalGPT, generate_text, prompt_ids
from .tokenizer import BPETokenizer
from .train import load_run
from .utils import get_device

__all__ = ["ask", "load_model", "main"]


def load_model(run) -> Tuple[MultimodalGPT, BPETokenizer]:
    """The model (eval mode, CPU) and its own tokenizer from a run folder or its checkpoint."""
    model, tokenizer, _, _ = load_run(run, "ask")
    return model, tokenizer


def _image(image, size: int) -> torch.Tensor:
    """A path to an image file, or a ``(3, H, W)`` tensor, as the model's ``(3, size, size)``."""
    fn = "ask"
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"{fn}: an image tensor must be float (3, H, W) in [0, 1], got "
                             f"{image.dtype} {tuple(image.shape)}")
        if image.shape[1:] != (size, size):
            image = F.interpolate(image[None], size=(size, size), mode="bilinear",
                                  align_corners=False, antialias=True)[0].clamp(0, 1)
        return image
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"{fn}: image must be a path to an image file or a (3, H, W) tensor, "
                        f"got {type(image).__name__}")
    path = os.fspath(image)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{fn}: image file {path} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{fn}: {path} is not an image file")
    try:
        return load_image(path, size)
    except Exception as err:  # PIL raises many kinds for files it cannot read
        raise ValueError(f"{fn}: {path} cannot be read as an image ({type(err).__name__}: "
                         f"{err})") from None


def ask(run_or_model: Union[str, os.PathLike, MultimodalGPT], image, question: Optional[str] = None,
        *, tokenizer: Optional[BPETokenizer] = None, device="cpu",
        max_new_tokens: Optional[int] = None) -> str:
    """The model's caption of ``image`` (no ``question``) or its answer to ``question``.

    ``run_or_model``: a training run (its folder or checkpoint file; read with its own
    tokenizer), or a :class:`~mmgpt.model.MultimodalGPT` with its ``tokenizer``. ``image``: a
    path to an image file or a ``(3, H, W)`` tensor in ``[0, 1]``. Greedy decoding, up to
    ``<eos>`` or ``max_new_tokens`` (default: what the context leaves). A question too long
    for the model's context is an error, as is a missing or unreadable image (named)."""
    fn = "ask"
    if isinstance(run_or_model, MultimodalGPT):
        model = run_or_model
        if not isinstance(tokenizer, BPETokenizer):
            raise TypeError(f"{fn}: a model needs its tokenizer (tokenizer=...), got "
                            f"{type(tokenizer).__name__}; or pass the run folder instead")
        if (tokenizer.vocab_size, tokenizer.image_id) != (model.config.vocab_size,
                                                          model.config.image_token_id):
            raise ValueError(f"{fn}: the tokenizer ({tokenizer.vocab_size} tokens, <image> = "
                             f"{tokenizer.image_id}) is not the model's ({model.config.vocab_size} "
                             f"tokens, <image> = {model.config.image_token_id}): a model is "
                             f"only read with the tokenizer it was trained with")
    elif isinstance(run_or_model, (str, os.PathLike)):
        if tokenizer is not None:
            raise ValueError(f"{fn}: a run is read with its own tokenizer; do not pass tokenizer=")
        model, tokenizer = load_model(run_or_model)
    else:
        raise TypeError(f"{fn}: run_or_model must be a run folder, a checkpoint file or a "
                        f"MultimodalGPT, got {type(run_or_model).__name__}")
    if question is not None and (not isinstance(question, str) or not question.strip()):
        raise ValueError(f"{fn}: question must be a non-empty string or None (for the caption), "
                         f"got {question!r}")
    context = model.config.context_length
    prompt = len(prompt_ids(tokenizer, question))
    if prompt >= context:
        raise ValueError(f"{fn}: the question is {prompt - 3} tokens; with <bos>, <image> and "
                         f"<sep> the prompt is {prompt}, which leaves no room for an answer in "
                         f"the model's context_length={context}: ask a shorter question")
    pixels = _image(image, model.config.image_size)
    model = model.to(device)
    return generate_text(model, tokenizer, pixels.to(device), question,
                         max_new_tokens=max_new_tokens)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmgpt.ask",
                                     description="Print a trained model's caption of an image, "
                                                 "or its answer to a question about it.")
    parser.add_argument("run", help="a run folder (holding checkpoint.pt) or a checkpoint file")
    parser.add_argument("image", help="an image file (any format Pillow reads)")
    parser.add_argument("question", nargs="?", default=None,
                        help="a question about the image (none: the caption)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    args = parser.parse_args(argv)
    try:
        print(ask(args.run, args.image, args.question, device=get_device(args.device)))
    except (FileNotFoundError, ValueError, TypeError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
