"""IPython start-up file for `tools/robust.py`: makes this kernel behave like another machine.

It is copied into a temporary IPYTHONDIR's profile_default/startup/, so it runs in the kernel
before the chapter's first cell, and only in robustness runs; readers' kernels never see it.

* MMGPT_ROBUST_SEED_OFFSET=k: every ``torch.manual_seed(s)`` (the chapters' and the package's,
  e.g. through ``mmgpt.setup`` and ``mmgpt.train``) seeds ``s + k`` instead. That changes weight
  initialisation, dropout and everything else drawn from torch's global generator (so the
  trained weights), but not the book's data: scenes, corpora and batches come from their own
  seeded generators.
* MMGPT_ROBUST_THREADS=n: torch uses n intra-op threads, whatever a cell asks for (another
  reduction order in every parallel kernel).

The instruction-set perturbation (AVX2 instead of AVX-512 kernels in ATen, MKL and oneDNN)
needs no code: it is set by environment variables before the kernel starts.
"""
import os

import torch

_offset = int(os.environ.get("MMGPT_ROBUST_SEED_OFFSET", "0") or 0)
_threads = int(os.environ.get("MMGPT_ROBUST_THREADS", "0") or 0)

if _offset:
    _manual_seed = torch.manual_seed

    def _perturbed_manual_seed(seed):
        return _manual_seed(int(seed) + _offset)

    torch.manual_seed = _perturbed_manual_seed
    torch.random.manual_seed = _perturbed_manual_seed

if _threads:
    _set_num_threads = torch.set_num_threads
    _set_num_threads(_threads)

    def _fixed_set_num_threads(n):
        return _set_num_threads(_threads)

    torch.set_num_threads = _fixed_set_num_threads

del os, torch
