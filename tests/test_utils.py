"""mmgpt.utils: atomic saves (device choice and seeding are exercised by every chapter)."""
from __future__ import annotations

import os
import threading

import pytest
import torch

from mmgpt.utils import load_weights_only, save_atomic


def test_save_atomic_writes_a_loadable_file(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    save_atomic({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert os.listdir(path.parent) == ["ckpt.pt"]


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"step": 1}, path)
    with pytest.raises(Exception):
        save_atomic({"lock": threading.Lock()}, path)  # cannot be pickled: fails mid-save
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_load_weights_only_names_the_caller_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="^caller: no checkpoint at"):
        load_weights_only(tmp_path / "missing.pt", "caller")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="^caller: .*garbage.pt is not a readable checkpoint"):
        load_weights_only(garbage, "caller")
    # weights_only=True: a pickled object that would run code is refused, not executed.
    torch.save({"lock": threading.Condition}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_weights_only(tmp_path / "code.pt", "caller")
    save_atomic({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_weights_only(tmp_path / "ok.pt", "caller")["w"], torch.ones(2))
