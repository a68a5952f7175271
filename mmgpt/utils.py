"""One place for the chores every chapter shares: seeding, device choice, autocast dtype,
and writing files atomically.

The set-up cell at the top of each chapter calls :func:`setup`, which uses the first three.
"""
from __future__ import annotations

import errno
import os
import pickle
import random
import shutil

import numpy as np
import torch

from ._checks import is_int

__all__ = ["seed_everything", "get_device", "autocast_dtype", "setup", "save_atomic",
           "check_pixels"]


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and PyTorch's random number generators (all devices)."""
    if not is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the best available device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (or the environment variable ``MMGPT_DEVICE``) forces a choice, e.g. ``"cpu"``.
    """
    prefer = prefer or os.environ.get("MMGPT_DEVICE")
    if prefer:
        try:
            device = torch.device(prefer)
        except (RuntimeError, TypeError):
            device = None
        if device is None or device.type not in ("cuda", "mps", "cpu") \
                or (device.type != "cuda" and device.index not in (None, 0)):
            raise ValueError(f"device must be 'cuda', 'cuda:N', 'mps' or 'cpu', got {prefer!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} was asked for, but CUDA is not available here")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device {prefer!r} was asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s), cuda:0 and up")
        if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device {prefer!r} was asked for, but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The reduced-precision dtype to train in on ``device``, or ``None`` for plain fp32.

    bf16 where the GPU computes it natively (compute capability 8.0 and newer: A100, L4,
    A10G, H100), fp16 on older GPUs such as Colab's T4 (7.5; use it with a gradient scaler),
    and fp32 on the CPU and MPS. ``torch.cuda.is_bf16_supported()`` is not the test: by
    default it also answers True where bf16 is only emulated, as on a T4, where it is slow
    and cuDNN has no bf16 convolutions.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def setup(seed: int = 0, device: str | None = None, quiet: bool = False) -> torch.device:
    """Seed everything, pick the device and print one line saying what was chosen.

    Returns the device, so a chapter starts with ``device = mmgpt.setup()``.
    """
    from . import __version__

    seed_everything(seed)
    chosen = get_device(device)
    try:  # crisp, reasonably sized figures in notebooks and in the book
        import matplotlib as mpl

        mpl.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "figure.figsize": (6.4, 3.6)})
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
    if not quiet:
        print(f"mmgpt {__version__} | torch {torch.__version__} | device: {chosen.type} | seed: {seed}")
    return chosen


def save_atomic(obj, path) -> None:
    """``torch.save(obj, path)``, all or nothing.

    The object is written in full to a temporary file beside ``path`` (``.NAME.tmp``),
    flushed to disk, and only then renamed over ``path`` (``os.replace`` is atomic), so
    ``path`` holds either the old file or the new one, never half of one, even if the
    process is killed midway; a later save overwrites what such a kill left behind. The
    file gets the usual permissions (``0o666`` less the umask). A write that fails (a full
    disk, most often) raises ``OSError`` saying so, and the old file is kept.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, (OSError, RuntimeError)):
            free = shutil.disk_usage(folder).free
            raise OSError(errno.ENOSPC if free < 2**26 else errno.EIO,
                          f"could not write {path} ({type(err).__name__}: {err}); "
                          f"{free / 2**20:.0f} MiB free on its disk"
                          + (" - the disk is full" if free < 2**26 else "")
                          + f"; the previous {name} is kept") from None
        raise


def load_weights_only(path, fn: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` (tensors and plain values only; no code
    runs) with errors that say what went wrong: ``FileNotFoundError`` when there is no
    file, ``ValueError`` when it is not a regular file, holds objects a weights-only load
    refuses, or is truncated, corrupt or not a torch file. ``fn`` names the caller."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{fn}: no checkpoint at {path}")
    if not os.path.isfile(path):  # a folder, a FIFO or a device would hang or fail oddly
        raise ValueError(f"{fn}: {path} is not a regular file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():  # a class or function: code
            raise ValueError(f"{fn}: {path} holds Python objects other than tensors and plain "
                             f"values, which mmgpt does not load: it is not an mmgpt "
                             f"checkpoint, and loading it fully could run code from the file"
                             ) from None
        raise ValueError(f"{fn}: {path} is not a readable checkpoint (truncated or corrupt?): "
                         f"{type(err).__name__}") from None
    except Exception as err:  # truncated, corrupt, or not a torch file at all
        raise ValueError(f"{fn}: {path} is not a readable checkpoint (truncated or "
                         f"corrupt?): {type(err).__name__}: {str(err).splitlines()[0][:200]}"
                         ) from None


def check_pixels(images: torch.Tensor, fn: str) -> None:
    """Refuse images scaled 0-255 where [0, 1] is expected (one host sync: call it where
    images come in, once, not on every step)."""
    if images.is_floating_point() and images.numel() and float(images.max()) > 1.5:
        raise ValueError(f"{fn}: images must hold pixels in [0, 1], got values up to "
                         f"{float(images.max()):.0f} (divide 0-255 pixels by 255)")
