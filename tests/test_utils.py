"""mmgpt.utils: atomic saves (device choice and seeding are exercised by every chapter)."""
from __future__ import annotations

import os
import threading

import pytest
import torch

from mmgpt.utils import save_atomic


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
