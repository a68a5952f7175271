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
    with pytest.raises(ValueError, match="code.pt holds Python objects other than tensors"):
        load_weights_only(tmp_path / "code.pt", "caller")
    save_atomic({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_weights_only(tmp_path / "ok.pt", "caller")["w"], torch.ones(2))


@pytest.mark.parametrize("capability, expected", [
    ((7, 5), torch.float16),   # T4 (Colab's free GPU): bf16 only emulated -> fp16 + scaler
    ((7, 0), torch.float16),   # V100
    ((8, 0), torch.bfloat16),  # A100
    ((8, 6), torch.bfloat16),  # A10G
    ((8, 9), torch.bfloat16),  # L4
    ((9, 0), torch.bfloat16),  # H100, H200
])
def test_autocast_dtype_follows_the_compute_capability_not_emulation(monkeypatch, capability, expected):
    from mmgpt.utils import autocast_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # torch's own answer counts emulated bf16 (a T4 says True); it must not decide.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("cuda") is expected
    assert autocast_dtype("cpu") is None and autocast_dtype("mps") is None
