"""Bring your own data: a folder of images with a JSON-lines index.

The folder holds images (any format Pillow reads) and an index, ``index.jsonl`` by
default, with one JSON object per line::

    {"image": "cats/001.jpg", "caption": "a cat asleep on a red sofa"}
    {"image": "cats/001.jpg", "question": "what colour is the sofa?", "answer": "red"}
    {"image": "dice/7.png", "question": "how many dots?", "answer": "two", "family": "count"}

``image`` is a path relative to the folder; a line needs a ``caption``, or a ``question``
and an ``answer``, or all three; ``family`` (optional) groups questions for the
baselines and defaults to ``"qa"``. Other fields are ignored. Blank lines are skipped.

**Bad input is never lost silently.** The whole index is checked when the dataset is made:
each line must be a JSON object with those fields as non-empty strings, its image must
exist inside the folder (absolute paths, ``..`` and links that lead out are refused) and
decode (``check_images=True`` decodes every image once; turn it off for very large sets and
a bad image is then reported, with its line, when it is loaded). With ``strict=True`` (the
default) one ``ValueError`` lists *every* bad line, ``index.jsonl:LINE: problem``, so they can
all be fixed at once; with ``strict=False`` the bad lines are skipped and one warning lists
them all. An index with no lines, or none good, is an error either way.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .. import _checks
from .common import BILINEAR, check_index

__all__ = ["FolderDataset", "load_image"]

_TEXT_FIELDS = ("caption", "question", "answer", "family")


def load_image(path: Union[str, os.PathLike], image_size: Optional[int] = None) -> torch.Tensor:
    """Read an image file as a float tensor ``(3, H, W)`` in ``[0, 1]``: RGB, transparency
    composited on white, resized (bilinear) to ``image_size x image_size`` if given."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image.alpha_composite(rgba)
        image = image.convert("RGB")
    if image_size is not None:
        image = image.resize((image_size, image_size), BILINEAR)
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array))


class FolderDataset:
    """Images and texts from a folder with a JSON-lines index (see the module docstring).

    ``ds[i]`` is a dict with ``image`` (float tensor ``(3, H, W)`` in ``[0, 1]``), the text
    fields the line has (``caption``; ``question``, ``answer`` and ``family``), ``path`` (the
    image path as written in the index) and ``line`` (its line number in the index).

    Args:
        root: the folder.
        index: the index file, relative to ``root`` (or an absolute path).
        image_size: resize every image to this square size (needed to batch images of
            different sizes); ``None`` keeps each image as it is.
        strict: ``True``: any bad line is an error (all of them are listed). ``False``: bad
            lines are skipped, with one warning that lists them.
        check_images: decode every image once now, so a corrupt one is caught up front.
    """

    def __init__(self, root: Union[str, os.PathLike],
                 index: Union[str, os.PathLike] = "index.jsonl", *,
                 image_size: Optional[int] = None, strict: bool = True,
                 check_images: bool = True):
        owner = "FolderDataset"
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"{owner}: root must be a path, got {type(root).__name__}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{owner}: root {str(self.root)!r} is not a folder")
        self.image_size = None if image_size is None else \
            _checks.positive_int(image_size, "image_size", owner)
        self.index = self.root / index
        if not self.index.is_file():
            raise FileNotFoundError(f"{owner}: index file {str(self.index)!r} does not exist")
        self.records, bad = self._read(check_images)
        listing = "\n".join(f"  {self.index.name}:{line}: {problem}" for line, problem in bad)
        if bad and strict:
            raise ValueError(f"{owner}: {len(bad)} bad line(s) in {str(self.index)!r} "
                             f"(fix them, or pass strict=False to skip them):\n{listing}")
        if not self.records:
            why = f"; its lines are all bad:\n{listing}" if bad else " (it is empty)"
            raise ValueError(f"{owner}: {str(self.index)!r} has no usable samples{why}")
        if bad:
            warnings.warn(f"{owner}: skipped {len(bad)} bad line(s) of {str(self.index)!r}, "
                          f"kept {len(self.records)}:\n{listing}", stacklevel=2)
        self.skipped: List[Tuple[int, str]] = bad

    def _read(self, check_images: bool) -> Tuple[List[dict], List[Tuple[int, str]]]:
        root = self.root.resolve()
        records, bad = [], []
        with open(self.index, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    records.append(self._check_line(text, line, root, check_images))
                except _BadLine as err:
                    bad.append((line, str(err)))
        return records, bad

    def _check_line(self, text: str, line: int, root: Path, check_images: bool) -> dict:
        try:
            item = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as err:
            raise _BadLine(f"not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(item, dict):
            raise _BadLine(f"expected a JSON object, got {type(item).__name__}")
        for field in ("image",) + _TEXT_FIELDS:
            if field in item and (not isinstance(item[field], str) or not item[field].strip()):
                raise _BadLine(f"field {field!r} must be a non-empty string, got {item[field]!r}")
        if "image" not in item:
            raise _BadLine("missing field 'image'")
        if ("question" in item) != ("answer" in item):
            have, lack = ("question", "answer") if "question" in item else ("answer", "question")
            raise _BadLine(f"has {have!r} but no {lack!r}")
        if "caption" not in item and "question" not in item:
            raise _BadLine("needs a 'caption' or a 'question' and an 'answer'")
        rel = item["image"]
        path = (root / rel).resolve()
        if os.path.isabs(rel) or not path.is_relative_to(root):
            raise _BadLine(f"image path {rel!r} leads outside the folder {str(root)!r}; refused")
        if not path.is_file():
            raise _BadLine(f"image file {rel!r} does not exist")
        if check_images:
            try:
                with Image.open(path) as image:
                    image.load()
            except Exception as err:  # PIL raises many kinds for broken files
                why = f"{type(err).__name__}: {err}"
                raise _BadLine(f"image {rel!r} cannot be read ({why})") from None
        record = {k: item[k] for k in _TEXT_FIELDS if k in item}
        if "question" in record:
            record.setdefault("family", "qa")
        return dict(record, path=rel, line=line, file=path)

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, index: int) -> dict:
        """Sample ``index`` without loading its image."""
        record = self.records[check_index(index, len(self.records), "FolderDataset")]
        return {k: v for k, v in record.items() if k != "file"}

    def __getitem__(self, index: int) -> dict:
        record = self.records[check_index(index, len(self.records), "FolderDataset")]
        try:
            image = load_image(record["file"], self.image_size)
        except Exception as err:
            why = f"{type(err).__name__}: {err}"
            raise ValueError(f"FolderDataset: {self.index.name}:{record['line']}: image "
                             f"{record['path']!r} cannot be read ({why})") from None
        return dict(image=image, **self.describe(index))

    def __repr__(self) -> str:
        return (f"FolderDataset(root={str(self.root)!r}, index={self.index.name!r}, "
                f"samples={len(self)}, image_size={self.image_size})")


class _BadLine(Exception):
    """One problem with one index line (collected, then reported together)."""
