"""Start-up code for `tools/robust.py`: makes Python processes behave like another machine's.

`tools/robust.py` copies it as ``sitecustomize.py`` into a temporary folder at the front of
PYTHONPATH, so it runs at the start of every Python process of a robustness run: the notebook's
kernel, and the processes a chapter starts itself (Chapter 13's `torchrun` runs), which must
be perturbed alike. Readers' and the test suite's processes never see it.

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

_wanted = os.environ.get("MMGPT_ROBUST_SEED_OFFSET") or os.environ.get("MMGPT_ROBUST_THREADS")
if _wanted:
    import torch

    _offset = int(os.environ.get("MMGPT_ROBUST_SEED_OFFSET", "0") or 0)
    _threads = int(os.environ.get("MMGPT_ROBUST_THREADS", "0") or 0)

    if _offset and not getattr(torch.manual_seed, "robust_offset", None):
        _manual_seed = torch.manual_seed

        def _perturbed_manual_seed(seed):
            return _manual_seed(int(seed) + _offset)

        _perturbed_manual_seed.robust_offset = _offset  # applied once, however often this runs
        torch.manual_seed = _perturbed_manual_seed
        torch.random.manual_seed = _perturbed_manual_seed

    if _threads:
        _set_num_threads = getattr(torch.set_num_threads, "robust_original", torch.set_num_threads)
        _set_num_threads(_threads)

        def _fixed_set_num_threads(n):
            return _set_num_threads(_threads)

        _fixed_set_num_threads.robust_original = _set_num_threads
        torch.set_num_threads = _fixed_set_num_threads
