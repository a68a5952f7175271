"""mmgpt.utils: atomic saves, weights-only loads, the autocast dtype per GPU, the device
choice (CUDA, then MPS, then the CPU; what is asked for, or a clear error) and ``setup``
(seeds every generator reproducibly, returns the device, says so in one line)."""
from __future__ import annotations

import os
import random
import threading

import matplotlib
import numpy as np
import pytest
import torch

import mmgpt
from mmgpt.utils import get_device, load_weights_only, save_atomic, setup


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


# ---------------------------------------------------------------------------------------------
# Device choice and setup (no GPU here: the test says which devices the machine has)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def machine(monkeypatch):
    """This machine, with CUDA and MPS present or not as the test sets them (neither at first),
    and no ``MMGPT_DEVICE`` in the environment."""
    has = {"cuda": False, "mps": False}
    monkeypatch.delenv("MMGPT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has["cuda"])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: has["mps"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if has["cuda"] else 0)
    return has


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu"),
])
def test_get_device_prefers_cuda_then_mps_then_the_cpu(machine, cuda, mps, expected):
    machine.update(cuda=cuda, mps=mps)
    assert get_device() == torch.device(expected)


def test_a_device_asked_for_is_used_and_the_argument_beats_the_environment(machine, monkeypatch):
    machine.update(cuda=True, mps=True)
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("mps") == torch.device("mps")
    assert get_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("MMGPT_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    assert get_device("mps") == torch.device("mps")


@pytest.mark.parametrize("cuda, mps, prefer, error, match", [
    (False, True, "cuda", ValueError, "device 'cuda' was asked for, but CUDA is not available"),
    (False, False, "cuda:0", ValueError, "device 'cuda:0' was asked for, but CUDA is not"),
    (True, False, "mps", ValueError, "device 'mps' was asked for, but MPS is not available"),
    (True, True, "tpu", ValueError, r"device must be 'cuda', 'cuda:N', 'mps' or 'cpu', got 'tpu'"),
    (True, True, "cuda:x", ValueError, "device must be .* got 'cuda:x'"),
    (True, True, 3, ValueError, "device must be .* got 3"),
    (True, True, "cuda:2", ValueError, "'cuda:2' was asked for, but this machine has 2 CUDA"),
    (True, True, "xpu", ValueError, "device must be .* got 'xpu'"),
    (True, True, "meta", ValueError, "device must be .* got 'meta'"),
    (True, True, "cpu:1", ValueError, "device must be .* got 'cpu:1'"),
])
def test_a_device_that_is_not_there_or_not_a_device_is_refused_by_name(machine, monkeypatch,
                                                                        cuda, mps, prefer,
                                                                        error, match):
    machine.update(cuda=cuda, mps=mps)
    with pytest.raises(error, match=match):
        get_device(prefer)
    if isinstance(prefer, str):  # the same from the environment, where Colab users set it
        monkeypatch.setenv("MMGPT_DEVICE", prefer)
        with pytest.raises(error, match=match):
            get_device()


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_setup_seeds_every_generator_and_returns_the_device(machine, capsys):
    with matplotlib.rc_context():  # setup sets the figure defaults; keep the suite's
        assert setup(seed=3) == torch.device("cpu")
        first = _draws()
        assert setup(seed=3, quiet=True) == torch.device("cpu")
        again = _draws()
        setup(seed=4, quiet=True)
        other = _draws()
        machine.update(cuda=True)
        assert setup(seed=3, device="cpu", quiet=True) == torch.device("cpu")
        assert setup(seed=3, quiet=True) == torch.device("cuda")  # picked, not initialised
        assert matplotlib.rcParams["figure.dpi"] == 100
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
    assert first[0] != other[0] and first[1] != other[1] and not torch.equal(first[2], other[2])
    out = capsys.readouterr().out  # one line, from the call that was not quiet
    assert out == (f"mmgpt {mmgpt.__version__} | torch {torch.__version__} | device: cpu | "
                   f"seed: 3\n")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(seed="0"), TypeError, "seed must be an int, got str"),
    (dict(seed=1.5), TypeError, "seed must be an int, got float"),
    (dict(seed=True), TypeError, "seed must be an int, got bool"),
    (dict(device="tpu"), ValueError, "device must be 'cuda', 'cuda:N', 'mps' or 'cpu'"),
    (dict(device="cuda"), ValueError, "CUDA is not available"),
])
def test_setup_refuses_bad_arguments_by_name(machine, capsys, kwargs, error, match):
    with pytest.raises(error, match=match):
        setup(**kwargs)
    assert capsys.readouterr().out == ""  # nothing claimed before the error
