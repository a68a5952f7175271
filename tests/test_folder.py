"""Tests for ``mmgpt.data.folder`` beyond ``tests/test_data.py``'s: the conversation format, a
folder's own split and the split held out by image, and the attacks issue 17 lists (each one
reproduced on a folder made here, then shown to be one named bad line, or a clear error).
"""
from __future__ import annotations

import json
import os
import re
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mmgpt.data import FolderDataset, load_image, split_by_image
from mmgpt.data.folder import MAX_PIXELS


def _png(path, size=(10, 8), color=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _write(path, lines):
    """JSON lines: dicts are dumped, str are written as they are, bytes are raw."""
    raw = [x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode("utf-8")
           for x in lines]
    path.write_bytes(b"\n".join(raw) + b"\n")


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "data"
    _png(root / "a.png")
    _png(root / "b.png", color=(0, 0, 255))
    _png(tmp_path / "outside.png")
    return root


GOOD = {"image": "a.png", "caption": "fine"}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------------------
# The attacks of issue 17: each one bad line (strict=False), or a clear error (strict=True)
# --------------------------------------------------------------------------------------

def _loop(root):
    os.symlink("loop.png", root / "loop.png")
    return {"image": "loop.png", "caption": "x"}


ATTACKS = {  # name: (make the bad line in root, the problem reported for it)
    "symlink loop": (_loop, r"image path 'loop\.png' is a symlink loop"),
    "NUL byte": (lambda root: {"image": "a\x00.png", "caption": "x"}, r"image path 'a\\x00\.png' contains a NUL"),
    "300-character name": (lambda root: {"image": "x" * 300 + ".png", "caption": "x"},
                           r"image path 'xxxx.*\(304 characters\) cannot be used \(File name too long\)"),
    "not UTF-8": (lambda root: b'{"image": "a.png", "caption": "caf\xe9"}',
                  r"not UTF-8 text \(byte 0xe9 at column 35\)"),
    "deep nesting": (lambda root: '{"image": "a.png", "caption": "x", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}",
                     "not readable JSON: nested too deeply"),
    "huge int in a used field": (lambda root: '{"image": "a.png", "caption": 1' + "0" * 5000 + "}",
                                 r"field 'caption' must be a non-empty string, got an integer of 5001 digits"),
    "unpaired surrogate": (lambda root: '{"image": "a.png", "caption": "x\\ud800"}',
                           r"field 'caption' is not valid Unicode \(an unpaired surrogate\)"),
    "FIFO": (lambda root: (os.mkfifo(root / "pipe.png"), {"image": "pipe.png", "caption": "x"})[1],
             r"image file 'pipe\.png' is not a regular file"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_attack_is_one_named_bad_line(root, attack):
    make, problem = ATTACKS[attack]
    _write(root / "index.jsonl", [GOOD, make(root), GOOD])
    with pytest.raises(ValueError, match=rf"1 bad line\(s\)(.|\n)*\n  index\.jsonl:2: {problem}"):
        FolderDataset(root)
    with pytest.warns(UserWarning, match=rf"skipped 1 bad line\(s\)(.|\n)*\n  index\.jsonl:2: {problem}"):
        ds = FolderDataset(root, strict=False)
    assert [ds[i]["line"] for i in range(len(ds))] == [1, 3]


def test_a_huge_int_in_an_ignored_field_is_ignored(root):
    # Python refuses to read an int over 4,300 digits (the whole data set aborted); the field is
    # ignored, so the line is kept, and reading it costs no conversion.
    _write(root / "index.jsonl", [GOOD, '{"image": "a.png", "caption": "y", "extra": -1' + "0" * 100_000 + "}"])
    ds = FolderDataset(root)
    assert len(ds) == 2 and not ds.skipped and ds[1]["caption"] == "y"


def test_a_bom_is_skipped(root):
    (root / "index.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n")
    ds = FolderDataset(root)
    assert len(ds) == 1 and ds[0]["caption"] == "fine"


def test_many_bad_lines_give_a_short_message(root):
    _write(root / "index.jsonl", [GOOD] + ['{"caption": "no image"}'] * 100_000)
    with pytest.raises(ValueError) as info:
        FolderDataset(root, check_images=False)
    message = str(info.value)
    assert "100000 bad line(s)" in message and "the first 20:" in message and "and 99980 more" in message
    assert len(message) < 3000 and message.count("missing field 'image'") == 20
    with pytest.warns(UserWarning) as record:
        ds = FolderDataset(root, strict=False, check_images=False)
    assert len(str(record[0].message)) < 3000 and len(ds) == 1 and len(ds.skipped) == 100_000


def test_sixteen_bit_images_are_scaled_not_clipped(root):
    values = np.array([[0, 1000, 40000, 65535]] * 3, dtype=np.uint16)
    Image.fromarray(values).save(root / "deep.png")
    assert Image.open(root / "deep.png").mode.startswith("I")
    image = load_image(root / "deep.png")
    assert image.shape == (3, 3, 4)
    expected = torch.tensor(values / 65535.0, dtype=torch.float32).expand(3, 3, 4)
    torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)
    assert load_image(root / "deep.png", 8).shape == (3, 8, 8)


def test_exif_orientation_is_applied(root):
    pixels = np.zeros((6, 10, 3), dtype=np.uint8)
    pixels[:, :5] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 5:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(root / "phone.png", exif=exif)
    image = load_image(root / "phone.png")
    assert image.shape == (3, 10, 6)  # upright: taller than wide
    assert image[:, 0, 3].tolist() == [1.0, 0.0, 0.0] and image[:, -1, 3].tolist() == [0.0, 0.0, 1.0]


def _huge_png(path, width, height):
    """A PNG header claiming ``width x height`` (with a token of data): tiny on disk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_huge_image_is_refused_before_decoding(root):
    _huge_png(root / "bomb.png", 13000, 13000)
    _write(root / "index.jsonl", [GOOD, {"image": "bomb.png", "caption": "x"}])
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"index\.jsonl:2: image 'bomb\.png' is too large: 13000x13000 = "
                                         r"169,000,000 pixels, more than max_pixels=64,000,000"):
        FolderDataset(root)
    ds = FolderDataset(root, check_images=False)  # refused when loaded, with its line
    with pytest.raises(ValueError, match=r"index\.jsonl:2: image 'bomb\.png' is too large"):
        ds[1]
    with pytest.raises(ValueError, match=r"load_image: image '.*bomb\.png' is too large"):
        load_image(root / "bomb.png")
    assert time.perf_counter() - start < 5
    assert MAX_PIXELS == 64_000_000
    with pytest.raises(ValueError, match=r"is too large: 10x8 = 80 pixels, more than max_pixels=50"):
        FolderDataset(root, max_pixels=50, check_images=False)[0]
    assert load_image(root / "a.png", max_pixels=80).shape == (3, 8, 10)
    with pytest.raises(ValueError, match="max_pixels must be"):
        FolderDataset(root, max_pixels=0)


def test_containment_is_checked_again_when_an_image_is_opened(root, tmp_path):
    os.symlink("a.png", root / "link.png")
    _write(root / "index.jsonl", [{"image": "link.png", "caption": "x"}, {"image": "b.png", "caption": "y"}])
    ds = FolderDataset(root)
    assert ds[0]["image"].shape == (3, 8, 10)
    (root / "link.png").unlink()  # swapped for a link that leads out, after the check
    os.symlink(tmp_path / "outside.png", root / "link.png")
    (root / "b.png").unlink()  # a checked file replaced by such a link
    os.symlink(tmp_path / "outside.png", root / "b.png")
    for k, name in enumerate(["link.png", "b.png"]):
        with pytest.raises(ValueError, match=rf"index\.jsonl:{k + 1}: image path '{name}' leads outside the folder"):
            ds[k]


def test_load_image_errors_name_the_file(root):
    (root / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"load_image: image '.*broken\.png' cannot be read \(Unidentified"):
        load_image(root / "broken.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(root / "missing.png")
    with pytest.raises(ValueError, match="NUL"):
        load_image("a\x00.png")
    os.mkfifo(root / "pipe.png")  # refused at once, not waited on
    with pytest.raises(ValueError, match=r"load_image: '.*pipe\.png' is not a regular file"):
        load_image(root / "pipe.png")
    with open(root / "a.png", "rb") as f:  # a file object works too
        assert load_image(f).shape == (3, 8, 10)


# --------------------------------------------------------------------------------------
# The conversation format
# --------------------------------------------------------------------------------------

def _conversation(image, *turns, **extra):
    roles = ["human", "gpt"] * len(turns)
    return dict(extra, image=image, conversations=[{"from": r, "value": v} for r, v in zip(roles, turns)])


def _json(path, records):
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")


def test_conversation_records_become_question_answer_lines(root):
    _json(root / "chat.json", [
        _conversation("a.png", "<image>\nWhat colour is it?", "red", id="r0"),
        _conversation("b.png", "Which colour?\n<image>", "blue", "And what is it?", "a square", id=7),
        _conversation("a.png", "Describe it.", "a red box", family="caption"),
    ])
    ds = FolderDataset(root, "chat.json")
    assert ds.format == "conversations" and len(ds) == 4
    samples = [ds.describe(i) for i in range(4)]
    assert [(s["question"], s["answer"], s["family"]) for s in samples] == [
        ("What colour is it?", "red", "qa"), ("Which colour?", "blue", "qa"),
        ("And what is it?", "a square", "qa"), ("Describe it.", "a red box", "caption")]
    assert [(s["record"], s["turn"], s["line"]) for s in samples] == [(0, 1, 2), (1, 1, 16), (1, 2, 16), (2, 1, 38)]
    assert samples[2]["where"] == "chat.json:16 (record [1], id 7, turn 2)"
    assert ds[1]["image"][:, 0, 0].tolist() == [0.0, 0.0, 1.0]


BAD_RECORDS = [  # (record, the problem reported for it)
    ([1, 2], "expected a JSON object, got list"),
    ({"image": "a.png"}, "missing field 'conversations'"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
     r"missing field 'image' \(a text-only record"),
    (_conversation(["a.png", "b.png"], "<image>\nq", "a"), "field 'image' must be one path"),
    (_conversation("a.png"), "field 'conversations' must be a non-empty list"),
    (_conversation("a.png", "<image>\nq"), r"turns must come in human/gpt pairs; 1 turn\(s\)"),
    (dict(image="a.png", conversations=[{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]),
     r"turn 1 must be from 'human', got 'gpt'"),
    (dict(image="a.png", conversations=[{"from": "human", "value": "q"}, {"from": "gpt"}]),
     r"turn 2 must be an object with 'from' and a non-empty string 'value'"),
    (_conversation("a.png", "<image>\n", "a"), r"turn 1's question is empty once '<image>' is removed"),
    (_conversation("a.png", "<image>\nq", "a", "<image>\nq2", "b"), r"'<image>' may appear once, in turn 1"),
    (_conversation("a.png", "q", "a <image>"), r"'<image>' may appear once, in turn 1"),
    (_conversation("missing.png", "<image>\nq", "a", id="m1"), r"image file 'missing\.png' does not exist"),
    (_conversation("../outside.png", "<image>\nq", "a"), r"image path '\.\./outside\.png' leads outside the folder"),
]


def test_bad_records_are_named_with_their_line_and_position(root):
    good = _conversation("a.png", "<image>\nq", "a")
    _json(root / "chat.json", [good] + [r for r, _ in BAD_RECORDS])
    with pytest.raises(ValueError, match=rf"{len(BAD_RECORDS)} bad record\(s\)") as info:
        FolderDataset(root, "chat.json")
    message = str(info.value)
    for k, (_, problem) in enumerate(BAD_RECORDS, start=1):
        assert re.search(rf"\n  chat\.json:\d+: record \[{k}\]( \(id '\w+'\))?: {problem}", message), problem
    assert re.search(rf"chat\.json:\d+: record \[{len(BAD_RECORDS) - 1}\] \(id 'm1'\): image file", message)
    ds = _quiet(FolderDataset, root, "chat.json", strict=False)
    assert len(ds) == 1 and len(ds.skipped) == len(BAD_RECORDS)


def test_a_json_file_that_cannot_be_read_is_an_error_even_when_not_strict(root):
    cases = {
        b'{"image": "a.png"}': r"must be a JSON list of records \(\[\.\.\.\]\); it starts with '\{'",
        b'[{"image": "a.png",\n "caption": }]': r"chat\.json:2: not valid JSON \(Expecting value at column 13\)",
        b'[{"image": "caf\xe9"}]': r"chat\.json:1: not UTF-8 text \(byte 0xe9 at column 16\)",
        b'[{"a": 1}\n {"b": 2}]': r"chat\.json:2: not valid JSON \(expected ',' or '\]' at column 2\)",
        b'[{"a": 1}] x': r"chat\.json:1: not valid JSON \(extra data after the list at column 12\)",
        b"[" + b"[" * 100_000 + b"]" * 100_001: r"chat\.json:1: record \[0\] is nested too deeply to read",
        b"[]": "has no usable samples",
    }
    for text, problem in cases.items():
        (root / "chat.json").write_bytes(text)
        with pytest.raises(ValueError, match=problem):
            _quiet(FolderDataset, root, "chat.json", strict=False)


def test_a_json_lines_index_may_hold_conversation_records(root):
    _write(root / "index.jsonl", [GOOD, _conversation("b.png", "<image>\nq1", "a1", "q2", "a2")])
    ds = FolderDataset(root)
    assert [ds.describe(i).get("question") for i in range(3)] == [None, "q1", "q2"]
    assert ds.describe(2)["where"] == "index.jsonl:2 (turn 2)" and ds.describe(0)["where"] == "index.jsonl:1"


def test_the_format_is_picked_by_suffix_or_by_sniffing(root):
    _json(root / "index.json", [_conversation("a.png", "<image>\nq", "a")])
    assert FolderDataset(root).format == "conversations"  # no index.jsonl: index.json
    _write(root / "index.jsonl", [GOOD])
    assert FolderDataset(root).format == "lines"  # index.jsonl first
    (root / "data.txt").write_text((root / "index.json").read_text(encoding="utf-8"), encoding="utf-8")
    assert FolderDataset(root, "data.txt").format == "conversations"
    _write(root / "data.txt", [GOOD])
    assert FolderDataset(root, "data.txt").format == "lines"
    (root / "index.jsonl").unlink()
    (root / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match="no index in .*: expected index.jsonl or index.json"):
        FolderDataset(root)


# --------------------------------------------------------------------------------------
# Splits: the folder's own, or held out by image
# --------------------------------------------------------------------------------------

def _many(root, n_images=10, per_image=3):
    lines = []
    for k in range(n_images):
        _png(root / f"img{k}.png", color=(k * 20, 0, 0))
        lines += [{"image": f"img{k}.png", "question": f"q{j}?", "answer": f"a{k}"} for j in range(per_image)]
    return lines


def test_split_by_image_keeps_each_image_on_one_side(root):
    lines = _many(root)
    lines.append({"image": "./img3.png", "caption": "the same file, spelt another way"})
    _write(root / "index.jsonl", lines)
    ds = FolderDataset(root, check_images=False)
    train, test = split_by_image(ds, 0.2, seed=0)
    assert sorted(train + test) == list(range(len(ds))) and len(test) in (6, 7)
    side = {}
    for i in train + test:
        key = os.path.normpath(ds.describe(i)["path"])
        assert side.setdefault(key, i in test) == (i in test), key
    assert split_by_image(ds, 0.2, seed=0) == (train, test)
    assert any(split_by_image(ds, 0.2, seed=s)[1] != test for s in range(1, 5))
    assert len(split_by_image(ds, 0.01, seed=0)[1]) >= 3  # at least one image
    with pytest.raises(ValueError, match="fraction must be"):
        split_by_image(ds, 1.0)
    _write(root / "index.jsonl", [GOOD, GOOD])
    with pytest.raises(ValueError, match="needs at least 2 distinct images"):
        split_by_image(FolderDataset(root), 0.5)


def test_split_holds_out_by_image_unless_the_folder_brings_its_own(root):
    _write(root / "index.jsonl", _many(root))
    train = FolderDataset(root, split="train", holdout=0.3, seed=1)
    test = FolderDataset(root, split="test", holdout=0.3, seed=1)
    assert len(train) + len(test) == 30 and len(test) == 9
    assert not {train.describe(i)["path"] for i in range(len(train))} & \
        {test.describe(i)["path"] for i in range(len(test))}
    assert "held out by image" in train.split_source and train.index.name == "index.jsonl"
    _write(root / "train.jsonl", [GOOD, GOOD])
    with pytest.raises(FileNotFoundError, match="has train.jsonl but no test.jsonl or test.json"):
        FolderDataset(root, split="test")
    _json(root / "test.json", [_conversation("b.png", "<image>\nq", "a")])
    own_train, own_test = FolderDataset(root, split="train"), FolderDataset(root, split="test")
    assert (len(own_train), len(own_test)) == (2, 1) and own_test.split_source == "test.json"
    assert len(FolderDataset(root, "index.jsonl", split="test", holdout=0.3, seed=1)) == 9  # index= wins
    with pytest.raises(ValueError, match="split must be"):
        FolderDataset(root, split="validation")
    for bad in (0, 1, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="holdout must be a number in \\(0, 1\\)"):
            FolderDataset(root, split="train", holdout=bad)
    with pytest.raises(ValueError, match="seed must be"):
        FolderDataset(root, split="train", seed=-1)
    sub = train.subset([0, 2])
    assert len(sub) == 2 and sub.describe(1) == train.describe(2) and len(train) == 21
