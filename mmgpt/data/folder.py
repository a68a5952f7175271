"""Bring your own data: a folder of images and an index, in mmgpt's JSON lines or in the
conversation format open vision-language models are fine-tuned on.

**mmgpt's JSON lines** (``index.jsonl``): one JSON object per line::

    {"image": "cats/001.jpg", "caption": "a cat asleep on a red sofa"}
    {"image": "cats/001.jpg", "question": "what colour is the sofa?", "answer": "red"}
    {"image": "dice/7.png", "question": "how many dots?", "answer": "two", "family": "count"}

``image`` is a path relative to the folder; a line needs a ``caption``, or a ``question``
and an ``answer``, or all three; ``family`` (optional) groups questions for the
baselines and defaults to ``"qa"``. Other fields are ignored. Blank lines are skipped.

**The conversation format** (LLaVA's, ``index.json``): one JSON list of records::

    [{"id": "000001", "image": "cats/001.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the sofa?"},
                        {"from": "gpt", "value": "Red."},
                        {"from": "human", "value": "Is the cat awake?"},
                        {"from": "gpt", "value": "No, it is asleep."}]}]

Turns come in ``human``/``gpt`` pairs, and each pair becomes one question/answer sample of
the record's image (``record`` and ``turn`` say where it came from). ``<image>`` marks where
the image goes; it may appear once, in the first human turn (before or after the text), and
is removed from the question with its newline, as LLaVA's own ``preprocess_multimodal`` does.
mmgpt answers one question about an image at a time, so **earlier turns are not context**: a
later question that leans on them ("and its colour?") is trained on without them. Pairs are
kept rather than refused because most real conversation data sets are multi-turn, and each
pair is still a question the image answers. A record may carry ``family`` (mmgpt's
extension; default ``"qa"``); ``id`` and other fields are ignored. A JSON-lines index may also
hold such records, one per line.

**Which index.** ``FolderDataset(root)`` reads ``index.jsonl``, else ``index.json``;
``index=`` names another file. ``.jsonl`` is read as JSON lines and ``.json`` as a
conversation list; any other name is sniffed (a file starting with ``[`` is a list).

**Splits.** A folder may bring its own split: ``FolderDataset(root, split="train")`` reads
``train.jsonl`` (or ``train.json``), ``split="test"`` reads ``test.jsonl`` (or ``test.json``).
A folder with neither is split for you, **by image, never by line**: the index is read and a
share ``holdout`` of its images (at least one), with all their lines, is the ``"test"`` side,
the rest ``"train"``, drawn by ``seed`` (:func:`split_by_image`); the same ``holdout`` and
``seed`` give complementary sides. ``ds.split_source`` says which happened.

**Bad input is never lost silently.** The whole index is checked when the dataset is made:
each line must be a JSON object with those fields as non-empty strings, its image must
exist inside the folder (absolute paths, ``..`` and links that lead out are refused; the
check is made again whenever an image is opened, so a link swapped in later is refused too)
and decode (``check_images=True`` decodes every image once; turn it off for very large sets and
a bad image is then reported, with its line, when it is loaded). With ``strict=True`` (the
default) one ``ValueError`` lists the bad lines, ``index.jsonl:LINE: problem`` (the first 20,
and how many more), so they can be fixed at once; with ``strict=False`` the bad lines are
skipped and one warning lists them the same way (``ds.skipped`` holds them all). An index with
no lines, or none good, is an error either way, and so is a ``.json`` file that cannot be read
as a list at all (invalid JSON, not UTF-8): past the damage no record can be trusted.
A line that is not UTF-8, nested too deeply or otherwise unreadable is one bad line; a UTF-8
byte-order mark is skipped; a huge integer in an ignored field is ignored (it is never converted).

**Images.** Transparency is composited on white; 16-bit greyscale is scaled (value / 65535),
not clipped; a photo's EXIF orientation is applied, so phone pictures stand upright. An
image over ``max_pixels`` (:data:`MAX_PIXELS`, 64 million, by default) is refused from its
header, before it is decoded; pass a larger ``max_pixels``, or ``None``, to read it.
"""
from __future__ import annotations

import copy
import errno
import json
import os
import re
import stat
import warnings
from pathlib import Path
from typing import IO, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .. import _checks
from .common import BILINEAR, Rng, check_index

__all__ = ["FolderDataset", "load_image", "split_by_image", "MAX_PIXELS", "IMAGE_TOKEN"]

MAX_PIXELS = 64_000_000  # 8000 x 8000: a large phone photo fits, a decompression bomb does not
IMAGE_TOKEN = "<image>"
MAX_LISTED = 20  # bad lines listed in an error or a warning (all of them are in ``skipped``)
SPLITS = ("train", "test")
_TEXT_FIELDS = ("caption", "question", "answer", "family")
_BOM = b"\xef\xbb\xbf"
_SPACE = re.compile(r"[ \t\n\r]*")
_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
          | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------

def load_image(path: Union[PathLike, IO[bytes]], image_size: Optional[int] = None, *,
               max_pixels: Optional[int] = MAX_PIXELS) -> torch.Tensor:
    """Read an image file (a path or a binary file object) as a float tensor ``(3, H, W)`` in
    ``[0, 1]``: RGB, upright by its EXIF orientation, transparency composited on white, 16-bit
    greyscale scaled, resized (bilinear) to ``image_size x image_size`` if given.

    A missing file raises ``FileNotFoundError``; a file that is not an image, or one over
    ``max_pixels`` (refused from its header, before decoding), raises ``ValueError`` naming it.
    """
    max_pixels = _check_max_pixels(max_pixels, "load_image")
    if image_size is not None:
        image_size = _checks.positive_int(image_size, "image_size", "load_image")
    if hasattr(path, "read"):
        name = getattr(path, "name", "<file object>")
        try:
            return _load(path, image_size, max_pixels)
        except _ImageError as err:
            raise ValueError(f"load_image: image {str(name)!r} {err}") from None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_image: path must be a path or a binary file object, got {type(path).__name__}")
    raw = os.fspath(path)
    if ("\x00" if isinstance(raw, str) else b"\x00") in raw:
        raise ValueError(f"load_image: path {_short(raw)} contains a NUL byte")
    fd = os.open(path, _FLAGS & ~getattr(os, "O_NOFOLLOW", 0))  # the user's own file: links are fine
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"load_image: {str(path)!r} is not a regular file")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            return _load(f, image_size, max_pixels)
        except _ImageError as err:
            raise ValueError(f"load_image: image {str(path)!r} {err}") from None


def _check_max_pixels(max_pixels, owner: str) -> Optional[int]:
    if max_pixels is None:
        return None
    return _checks.positive_int(max_pixels, "max_pixels", owner)


def _decode(f: IO[bytes], max_pixels: Optional[int]) -> Image.Image:
    """Open and decode, refusing an image over ``max_pixels`` from its header first."""
    try:
        with warnings.catch_warnings():  # the limit is ours (max_pixels), not Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(f)
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise _ImageError(f"is too large: {width}x{height} = {width * height:,} pixels, more than "
                                  f"max_pixels={max_pixels:,} (pass a larger max_pixels, or None, to read it)")
            image.load()
        return image
    except _ImageError:
        raise
    except Image.UnidentifiedImageError:  # its message names the file object, not the file
        raise _ImageError("cannot be read (UnidentifiedImageError: not an image format Pillow knows)") from None
    except Image.DecompressionBombError as err:
        raise _ImageError(f"is too large for Pillow to open ({err})") from None
    except Exception as err:  # PIL raises many kinds for broken files
        raise _ImageError(f"cannot be read ({type(err).__name__}: {err})") from None


def _load(f: IO[bytes], image_size: Optional[int], max_pixels: Optional[int]) -> torch.Tensor:
    image = _decode(f, max_pixels)
    try:
        return _to_tensor(ImageOps.exif_transpose(image), image_size)
    except Exception as err:
        raise _ImageError(f"cannot be read ({type(err).__name__}: {err})") from None


def _to_tensor(image: Image.Image, image_size: Optional[int]) -> torch.Tensor:
    if image.mode in _WIDE_MODES:  # 16- or 32-bit greyscale: scale it, do not clip it to 8 bits
        scale = 1.0 if image.mode == "F" else 65535.0
        gray = np.clip(np.asarray(image, dtype=np.float32) / scale, 0.0, 1.0)
        if image_size is not None:
            gray = np.array(Image.fromarray(gray, "F").resize((image_size, image_size), BILINEAR))
        return torch.from_numpy(np.ascontiguousarray(gray)).expand(3, *gray.shape).contiguous()
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    image = image.convert("RGB")
    if image_size is not None:
        image = image.resize((image_size, image_size), BILINEAR)
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array))


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------

class FolderDataset:
    """Images and texts from a folder with an index (see the module docstring for the formats).

    ``ds[i]`` is a dict with ``image`` (float tensor ``(3, H, W)`` in ``[0, 1]``), the text
    fields the sample has (``caption``; ``question``, ``answer`` and ``family``), ``path`` (the
    image path as written in the index), ``line`` (the index line it starts on) and ``where``
    (``"index.jsonl:3"``, or ``"chat.json:12 (record [1], id 7, turn 2)"``: the place to fix);
    a conversation sample also has ``record`` (its position in the list) and ``turn``.

    Args:
        root: the folder.
        index: the index file, relative to ``root`` (or an absolute path); by default
            ``index.jsonl``, else ``index.json`` (or the split's own file, see ``split``).
        split: ``None`` (the whole index), ``"train"`` or ``"test"``: the folder's own
            ``train.jsonl``/``test.jsonl`` (or ``.json``) if it has them, else that side of
            the index split by image (``holdout``, ``seed``).
        holdout: the share of images held out as ``"test"`` when the folder has no split.
        seed: draws the held-out images.
        image_size: resize every image to this square size (needed to batch images of
            different sizes); ``None`` keeps each image as it is.
        strict: ``True``: any bad line is an error (the first 20 are listed). ``False``: bad
            lines are skipped, with one warning that counts and lists them.
        check_images: decode every image once now, so a corrupt one is caught up front.
        max_pixels: refuse images with more pixels than this (``None``: no limit of ours).
    """

    def __init__(self, root: PathLike, index: Optional[PathLike] = None, *,
                 split: Optional[str] = None, holdout: float = 0.1, seed: int = 0,
                 image_size: Optional[int] = None, strict: bool = True,
                 check_images: bool = True, max_pixels: Optional[int] = MAX_PIXELS):
        owner = "FolderDataset"
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"{owner}: root must be a path, got {type(root).__name__}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{owner}: root {str(self.root)!r} is not a folder")
        self.image_size = None if image_size is None else \
            _checks.positive_int(image_size, "image_size", owner)
        self.max_pixels = _check_max_pixels(max_pixels, owner)
        self.split = _checks.one_of(split, "split", owner, (None,) + SPLITS)
        holdout = _checks.number(holdout, "holdout", owner, 0, 1, low_open=True, high_open=True)
        seed = _checks.integer(seed, "seed", owner, minimum=0)
        strict = _checks.boolean(strict, "strict", owner)
        check_images = _checks.boolean(check_images, "check_images", owner)
        self._real_root = os.path.realpath(self.root)
        self.index, own = self._find_index(index, split)
        self.format = self._sniff()
        unit = "line" if self.format == "lines" else "record"
        records, bad = self._read(check_images)
        self.skipped: List[Tuple[int, str]] = bad
        listing = self._listing(bad)
        if bad and strict:
            raise ValueError(f"{owner}: {len(bad)} bad {unit}(s) in {str(self.index)!r} "
                             f"(fix them, or pass strict=False to skip them){listing}")
        if not records:
            why = f"; its {unit}s are all bad{listing}" if bad else " (it is empty)"
            raise ValueError(f"{owner}: {str(self.index)!r} has no usable samples{why}")
        if bad:
            warnings.warn(f"{owner}: skipped {len(bad)} bad {unit}(s) of {str(self.index)!r}, "
                          f"kept {len(records)}{listing}", stacklevel=2)
        self.records = records
        self.split_source = self.index.name
        if split is not None and not own:
            sides = dict(zip(SPLITS, split_by_image(self, holdout, seed)))
            self.records = [records[i] for i in sides[split]]
            self.split_source = f"{self.index.name} held out by image (holdout={holdout}, seed={seed})"

    # -- which file, which format -------------------------------------------------------

    def _find_index(self, index: Optional[PathLike], split: Optional[str]) -> Tuple[Path, bool]:
        """The index file, and whether it is the folder's own file for ``split``."""
        owner = "FolderDataset"
        if index is not None:
            path = self.root / index
            if not path.is_file():
                raise FileNotFoundError(f"{owner}: index file {str(path)!r} does not exist")
            return path, False
        if split is not None:
            for name in (f"{split}.jsonl", f"{split}.json"):
                if (self.root / name).is_file():
                    return self.root / name, True
            others = [f"{s}{ext}" for s in SPLITS for ext in (".jsonl", ".json") if (self.root / f"{s}{ext}").is_file()]
            if others:
                raise FileNotFoundError(f"{owner}: {str(self.root)!r} has {' and '.join(others)} but no "
                                        f"{split}.jsonl or {split}.json; give the folder both sides of its split, "
                                        f"or neither (then its index is split by image)")
        for name in ("index.jsonl", "index.json"):
            if (self.root / name).is_file():
                return self.root / name, False
        also = f", or {split}.jsonl / {split}.json" if split else ""
        raise FileNotFoundError(f"{owner}: no index in {str(self.root)!r}: expected index.jsonl or "
                                f"index.json{also} (or pass index=)")

    def _sniff(self) -> str:
        suffix = self.index.suffix.lower()
        if suffix in (".jsonl", ".json"):
            return "lines" if suffix == ".jsonl" else "conversations"
        with open(self.index, "rb") as f:
            start = f.read(4096)
        start = start[len(_BOM):] if start.startswith(_BOM) else start
        return "conversations" if start.lstrip().startswith(b"[") else "lines"

    # -- reading ------------------------------------------------------------------------

    def _read(self, check_images: bool) -> Tuple[List[dict], List[Tuple[int, str]]]:
        records, bad = [], []
        items = self._lines() if self.format == "lines" else self._list()
        for line, record, item in items:
            try:
                if isinstance(item, _BadLine):
                    raise item
                records += self._samples(item, line, record, check_images)
            except _BadLine as err:
                bad.append((line, str(err) if record is None else f"{_position(record, item)}: {err}"))
        return records, bad

    def _lines(self):
        """``(line, None, item or _BadLine)`` for each non-blank line of a JSON-lines index."""
        with open(self.index, "rb") as f:
            for line, raw in enumerate(f, start=1):
                if line == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM):]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    byte = f"0x{raw[err.start]:02x}"
                    yield line, None, _BadLine(f"not UTF-8 text (byte {byte} at column {err.start + 1})")
                    continue
                if text.strip():
                    yield line, None, _parse_line(text.rstrip("\r\n"))

    def _list(self):
        """``(line, k, record k)`` for each record of a ``.json`` list; a file that cannot be
        read as a list is an error whatever ``strict`` says (past the damage, nothing is sure)."""
        data = self.index.read_bytes()
        data = data[len(_BOM):] if data.startswith(_BOM) else data
        name = self.index.name
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line, column = data.count(b"\n", 0, err.start) + 1, err.start - data.rfind(b"\n", 0, err.start)
            raise ValueError(f"FolderDataset: {name}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at "
                             f"column {column}); a .json index is read as a whole, so fix this first") from None

        def broken(pos: int, what: str) -> ValueError:
            line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
            return ValueError(f"FolderDataset: {name}:{line}: not valid JSON ({what} at column {column}); "
                              f"a .json index is read as a whole, so fix this first")

        decoder = json.JSONDecoder(parse_int=_parse_int)
        pos = _SPACE.match(text).end()
        if not text.startswith("[", pos):
            raise ValueError(f"FolderDataset: {name} must be a JSON list of records ([...]); it starts with "
                             f"{text[pos:pos + 1]!r} (JSON lines? name the file .jsonl)")
        pos, k, line, counted = _SPACE.match(text, pos + 1).end(), 0, 1, 0
        while not (k == 0 and text.startswith("]", pos)):
            line, counted = line + text.count("\n", counted, pos), pos
            try:
                item, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise broken(err.pos, err.msg) from None
            except RecursionError:
                raise ValueError(f"FolderDataset: {name}:{line}: record [{k}] is nested too deeply to read; "
                                 f"a .json index is read as a whole, so fix this first") from None
            yield line, k, item
            pos = _SPACE.match(text, pos).end()
            if not text.startswith(",", pos):
                break
            pos, k = _SPACE.match(text, pos + 1).end(), k + 1
        if not text.startswith("]", pos):
            raise broken(pos, "expected ',' or ']'")
        pos = _SPACE.match(text, pos + 1).end()
        if pos != len(text):
            raise broken(pos, "extra data after the list")

    def _samples(self, item, line: int, record: Optional[int], check_images: bool) -> List[dict]:
        """The samples of one line or record (several for a multi-turn conversation)."""
        if not isinstance(item, dict):
            raise _BadLine(f"expected a JSON object, got {type(item).__name__}")
        conversation = record is not None or "conversations" in item
        if conversation:
            texts = _conversation_texts(item)
        else:
            texts = [_line_texts(item)]
        if "image" not in item:
            raise _BadLine("missing field 'image'")
        rel = item["image"]
        if not isinstance(rel, str) or not rel.strip():
            raise _BadLine(f"field 'image' must be one path (a non-empty string), got {_short(rel)}")
        file, key = self._locate(rel)
        if check_images:
            with self._open(file, rel) as f:
                try:
                    _decode(f, self.max_pixels)
                except _ImageError as err:
                    raise _BadLine(f"image {rel!r} {err}") from None
        where, ident = f"{self.index.name}:{line}", _ident(item)
        samples = []
        for turn, fields in enumerate(texts, start=1):
            sample = dict(fields, path=rel, line=line, where=where, file=file, key=key)
            if "question" in sample:
                sample.setdefault("family", "qa")
            if record is not None:
                id_part = "" if ident is None else f", id {ident}"
                sample.update(record=record, turn=turn, where=f"{where} (record [{record}]{id_part}, turn {turn})")
            elif conversation:
                sample.update(turn=turn, where=f"{where} (turn {turn})")
            samples.append(sample)
        return samples

    def _locate(self, rel: str) -> Tuple[Path, str]:
        """The image's path (kept unresolved: it is resolved again whenever it is opened) and
        its real path relative to the folder (which image it is, for splitting by image)."""
        if "\x00" in rel:
            raise _BadLine(f"image path {_short(rel)} contains a NUL byte")
        path = self.root / rel
        real = os.path.realpath(path)
        if os.path.isabs(rel) or not _inside(real, self._real_root):
            raise _BadLine(f"image path {_short(rel)} leads outside the folder {self._real_root!r}; refused")
        try:
            mode = os.stat(real).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise _BadLine(f"image file {_short(rel)} does not exist") from None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _BadLine(f"image path {_short(rel)} is a symlink loop") from None
            raise _BadLine(f"image path {_short(rel)} cannot be used ({err.strerror})") from None
        if stat.S_ISDIR(mode):
            raise _BadLine(f"image file {_short(rel)} does not exist")
        if not stat.S_ISREG(mode):
            raise _BadLine(f"image file {_short(rel)} is not a regular file")
        return path, os.path.relpath(real, self._real_root)

    def _open(self, path: Path, rel: str) -> IO[bytes]:
        """Open an image for reading, checking again that it is a regular file inside the folder:
        the real path before opening (no link followed at the last step), and on Linux the file
        actually opened (``/proc/self/fd``), so that a link swapped in at any moment is refused."""
        real = os.path.realpath(path)
        if not _inside(real, self._real_root):
            raise _BadLine(f"image path {_short(rel)} leads outside the folder {self._real_root!r}; refused")
        try:
            fd = os.open(real, _FLAGS)
        except OSError as err:
            raise _BadLine(f"image file {_short(rel)} cannot be opened ({err.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _BadLine(f"image file {_short(rel)} is not a regular file")
            try:
                opened = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # not Linux: the check before opening stands
                opened = real
            if not _inside(opened, self._real_root):
                raise _BadLine(f"image path {_short(rel)} leads outside the folder {self._real_root!r}; refused")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def _listing(self, bad: List[Tuple[int, str]]) -> str:
        head = ":" if len(bad) <= MAX_LISTED else f"; the first {MAX_LISTED}:"
        lines = [f"\n  {self.index.name}:{line}: {problem}" for line, problem in bad[:MAX_LISTED]]
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        return head + "".join(lines) + more if bad else ""

    # -- the dataset --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    def image_key(self, index: int) -> str:
        """Which image sample ``index`` shows: its real path relative to the folder (two
        spellings of one file are one image)."""
        return self.records[check_index(index, len(self.records), "FolderDataset")]["key"]

    def describe(self, index: int) -> dict:
        """Sample ``index`` without loading its image."""
        record = self.records[check_index(index, len(self.records), "FolderDataset")]
        return {k: v for k, v in record.items() if k not in ("file", "key")}

    def __getitem__(self, index: int) -> dict:
        record = self.records[check_index(index, len(self.records), "FolderDataset")]
        try:
            with self._open(record["file"], record["path"]) as f:
                image = _load(f, self.image_size, self.max_pixels)
        except _BadLine as err:
            raise ValueError(f"FolderDataset: {record['where']}: {err}") from None
        except _ImageError as err:
            raise ValueError(f"FolderDataset: {record['where']}: image {record['path']!r} {err}") from None
        return dict(image=image, **self.describe(index))

    def subset(self, indices) -> "FolderDataset":
        """A view of the samples at ``indices`` (e.g. one side of :func:`split_by_image`)."""
        view = copy.copy(self)
        view.records = [self.records[check_index(i, len(self.records), "FolderDataset")] for i in indices]
        return view

    def __repr__(self) -> str:
        return (f"FolderDataset(root={str(self.root)!r}, index={self.index.name!r}, "
                f"samples={len(self)}, image_size={self.image_size})")


def split_by_image(dataset, fraction: float = 0.1, seed: int = 0) -> Tuple[List[int], List[int]]:
    """Split a data set's sample indices in two **by image**: a share ``fraction`` of its
    distinct images (at least one, never all), with every sample that shows them, is the
    second list; the rest the first. Deterministic by ``seed`` (on every machine).

    Images are told apart by ``dataset.image_key(i)`` when there is one (a
    :class:`FolderDataset`: the real file), else by ``describe(i)["path"]``."""
    owner = "split_by_image"
    fraction = _checks.number(fraction, "fraction", owner, 0, 1, low_open=True, high_open=True)
    seed = _checks.integer(seed, "seed", owner, minimum=0)
    key = getattr(dataset, "image_key", None) or (lambda i: dataset.describe(i)["path"])
    keys = [key(i) for i in range(len(dataset))]
    images = sorted(set(keys))
    if len(images) < 2:
        raise ValueError(f"{owner}: needs at least 2 distinct images to hold some out, the data set has {len(images)}")
    Rng(seed).shuffle(images)
    held = set(images[:min(len(images) - 1, max(1, round(fraction * len(images))))])
    return [i for i, k in enumerate(keys) if k not in held], [i for i, k in enumerate(keys) if k in held]


# --------------------------------------------------------------------------------------
# Lines and records
# --------------------------------------------------------------------------------------

def _parse_line(text: str):
    try:
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as err:
        return _BadLine(f"not valid JSON ({err.msg} at column {err.colno})")
    except RecursionError:
        return _BadLine("not readable JSON: nested too deeply")
    except ValueError as err:
        return _BadLine(f"not readable JSON ({_short(str(err))})")


def _line_texts(item: dict) -> dict:
    """The text fields of one mmgpt line, checked."""
    if "image" in item and (not isinstance(item["image"], str) or not item["image"].strip()):
        raise _BadLine(f"field 'image' must be a non-empty string, got {_short(item['image'])}")
    for field in _TEXT_FIELDS:
        if field in item:
            _text(item[field], f"field {field!r}")
    if "image" not in item:
        raise _BadLine("missing field 'image'")
    if ("question" in item) != ("answer" in item):
        have, lack = ("question", "answer") if "question" in item else ("answer", "question")
        raise _BadLine(f"has {have!r} but no {lack!r}")
    if "caption" not in item and "question" not in item:
        raise _BadLine("needs a 'caption' or a 'question' and an 'answer'")
    return {k: item[k] for k in _TEXT_FIELDS if k in item}


def _conversation_texts(item: dict) -> List[dict]:
    """The question/answer pairs of one conversation record, checked, ``<image>`` removed."""
    if "conversations" not in item:
        raise _BadLine("missing field 'conversations'")
    if "image" not in item:
        raise _BadLine("missing field 'image' (a text-only record: mmgpt needs an image)")
    if not isinstance(item["image"], str):
        raise _BadLine(f"field 'image' must be one path (a string), got {_short(item['image'])}")
    turns = item["conversations"]
    if not isinstance(turns, list) or not turns:
        raise _BadLine(f"field 'conversations' must be a non-empty list of turns, got {_short(turns)}")
    if len(turns) % 2:
        raise _BadLine(f"turns must come in human/gpt pairs; {len(turns)} turn(s)")
    values = []
    for t, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or not turn["value"].strip():
            raise _BadLine(f"turn {t} must be an object with 'from' and a non-empty string 'value', "
                           f"got {_short(turn)}")
        role = "human" if t % 2 else "gpt"
        if turn.get("from") != role:
            raise _BadLine(f"turn {t} must be from {role!r}, got {_short(turn.get('from'))}")
        values.append(_text(turn["value"], f"turn {t}"))
    marks = [t for t, v in enumerate(values, start=1) for _ in range(v.count(IMAGE_TOKEN))]
    if marks not in ([], [1]):
        raise _BadLine(f"{IMAGE_TOKEN!r} may appear once, in turn 1; it appears in turn(s) {marks}")
    family = _text(item["family"], "field 'family'") if "family" in item else "qa"
    pairs = []
    for t in range(0, len(values), 2):
        question = values[t].replace(IMAGE_TOKEN, "", 1).strip()
        if not question:
            raise _BadLine(f"turn {t + 1}'s question is empty once {IMAGE_TOKEN!r} is removed")
        pairs.append(dict(question=question, answer=values[t + 1].strip(), family=family))
    return pairs


def _text(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _BadLine(f"{what} must be a non-empty string, got {_short(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadLine(f"{what} is not valid Unicode (an unpaired surrogate)") from None
    return value


def _ident(item) -> Optional[str]:
    """A record's ``id``, short, for messages (``None`` if it has no usable one)."""
    ident = item.get("id") if isinstance(item, dict) else None
    return _short(ident, 60) if isinstance(ident, (str, int)) and not isinstance(ident, bool) else None


def _position(record: int, item) -> str:
    ident = _ident(item)
    return f"record [{record}]" + ("" if ident is None else f" (id {ident})")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _short(value, limit: int = 200) -> str:
    """``repr(value)``, cut to about ``limit`` characters for a message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:limit]}...{size}"


def _parse_int(digits: str):
    """JSON integers: Python refuses to convert one over 4,300 digits (and would take long), so a
    long one is kept as a marker: an ignored field stays ignored, a used one is reported."""
    return int(digits) if len(digits) <= 1000 else _BigInt(len(digits.lstrip("-")))


class _BigInt:
    __slots__ = ("digits",)

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"


class _BadLine(Exception):
    """One problem with one index line (collected, then reported together)."""


class _ImageError(Exception):
    """Why an image cannot be used (its caller names the file, and the line)."""
