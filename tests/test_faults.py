"""Faults, bad settings and damaged files: every one ends in one clear line or the right
result, and no stop loses a finished step.

Each test reproduces a case found by attacking the training stack (see the project's issue on
fault handling): the process-group SIGTERM with data workers, NaN settings and losses, two
runs in one folder, damaged metrics, a full disk, hostile tokenizers and checkpoints, and the
edges of the model's API.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mmgpt import evaluate as ev
from mmgpt import train as tr
from mmgpt import utils
from mmgpt.model import MultimodalGPT, MultimodalGPTConfig
from mmgpt.tokenizer import BPETokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**overrides) -> tr.TrainConfig:
    overrides.setdefault("eval_every", 1_000)
    overrides.setdefault("eval_size", 8)  # evaluations run on 8 scenes: no test reads their accuracy
    return tr.TrainConfig.from_preset("tiny", **overrides)


def run_cli(args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def logged_steps(out_dir) -> list:
    return [r["step"] for r in ev.load_metrics(out_dir)["train"]]


# --------------------------------------------------------------------------------------
# Stops that lose nothing
# --------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
def test_sigterm_to_the_process_group_with_workers_saves_the_last_step(tmp_path):
    # How Slurm, systemd, Kubernetes and `timeout` stop a job: every process of the group,
    # data workers included, gets SIGTERM at once.
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmgpt.train", "--preset", "tiny", "--out", str(tmp_path),
         "--no-progress", "--set", "steps=100000", "--set", "log_every=1",
         "--set", "ckpt_every=100000", "--set", "num_workers=2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    metrics = tmp_path / tr.METRICS
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 5):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "killed by signal" not in err
    step = tr.load_checkpoint(tmp_path / tr.CHECKPOINT)["step"]
    assert step >= 5 and step >= max(logged_steps(tmp_path))  # every finished step kept


def test_the_wall_time_limit_saves_and_a_resume_may_change_how_a_run_is_watched(tmp_path):
    result = tr.train(tiny(steps=40, max_minutes=1e-9), tmp_path, progress=False)
    assert result["interrupted"] == "max_minutes" and result["step"] == 1
    # num_workers, max_minutes, log_every, ckpt_every, eval_every cannot change the steps
    done = tr.train(tiny(steps=40, num_workers=1, log_every=4, ckpt_every=20), tmp_path,
                    progress=False, resume=True)
    assert done["step"] == 40
    with pytest.raises(ValueError, match=r"differs in \['batch_size'\]"):
        tr.train(tiny(steps=40, batch_size=8), tmp_path, progress=False, resume=True)


def test_a_resume_from_the_command_line_needs_no_settings_repeated(tmp_path):
    tr.train(tiny(steps=6, ckpt_every=3), tmp_path, progress=False, stop_at=3)
    result = run_cli(["mmgpt.train", "--out", str(tmp_path), "--resume", "--no-progress",
                      "--set", "num_workers=1"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["step"] == 6


# --------------------------------------------------------------------------------------
# Numbers that are not numbers
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("grad_clip", float("nan")), ("weight_decay", float("nan")), ("weight_decay", float("inf")),
    ("lr", float("inf")), ("lr", "abc"), ("caption_fraction", "x"), ("max_minutes", "soon"),
    ("betas", 0.9), ("betas", [0.9, float("nan")]), ("families", 5), ("num_objects", 2),
    ("freeze", 5), ("model", 5), ("compile", "no"), ("render_once", 1), ("image_size", 100_000),
])
def test_settings_that_are_not_what_they_say_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig: {field} must"):
        tiny(**{field: value})


def test_a_loss_that_stops_being_finite_ends_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="stopped being finite"):
        tr.train(tiny(steps=60, lr=1e30, min_lr=1e30, ckpt_every=1, log_every=1), tmp_path,
                 progress=False)
    path = tmp_path / tr.CHECKPOINT
    if path.exists():  # saved before the loss broke: finite weights only
        ckpt = tr.load_checkpoint(path)
        assert all(bool(torch.isfinite(t).all()) for t in ckpt["model"].values()
                   if t.is_floating_point())


def test_the_cli_says_compile_no_is_not_a_bool_and_a_file_is_not_a_folder(tmp_path):
    bad = run_cli(["mmgpt.train", "--preset", "tiny", "--out", str(tmp_path / "r"),
                   "--set", "compile=no"])
    assert bad.returncode == 2 and "compile must be true or false" in bad.stderr
    (tmp_path / "afile").write_text("x")
    bad = run_cli(["mmgpt.train", "--preset", "tiny", "--out", str(tmp_path / "afile" / "sub"),
                   "--no-progress"])
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert "afile" in bad.stderr


def test_a_model_that_cannot_be_built_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="num_heads"):
        tr.train(tiny(model={"dim": 7, "num_heads": 4}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------
# One run per folder, one run's records per metrics file
# --------------------------------------------------------------------------------------

def test_a_second_run_into_a_busy_folder_is_refused(tmp_path):
    lock = tr._RunLock(str(tmp_path), rank=0)  # a run holds the folder
    try:
        with pytest.raises(FileExistsError, match="another run is training"):
            tr.train(tiny(steps=2), tmp_path, progress=False)
    finally:
        lock.release()
    tr.train(tiny(steps=2), tmp_path, progress=False)  # free again once it ends


def test_a_fresh_run_refuses_old_metrics_and_a_restart_before_the_first_save_starts_clean(tmp_path):
    (tmp_path / tr.METRICS).write_text('{"kind": "train", "step": 7, "loss": 1.0}\n')
    with pytest.raises(FileExistsError, match="metrics.jsonl from another run"):
        tr.train(tiny(steps=2), tmp_path, progress=False)
    tr.train(tiny(steps=2), tmp_path, progress=False, resume="auto")  # torchrun's restart
    assert logged_steps(tmp_path) == sorted(set(logged_steps(tmp_path)))
    assert 7 not in logged_steps(tmp_path)


def test_damaged_metrics_lines(tmp_path):
    tr.train(tiny(steps=4, ckpt_every=2), tmp_path, progress=False, stop_at=2)
    metrics = tmp_path / tr.METRICS
    metrics.write_text(metrics.read_text() + '{"kind": "train", "st')  # cut short by a kill
    tr.train(tiny(steps=4, ckpt_every=2), tmp_path, progress=False, resume=True)
    assert logged_steps(tmp_path) == sorted(set(logged_steps(tmp_path)))
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl line 2 is not JSON"):
        tr.train(tiny(steps=4, ckpt_every=2), tmp_path, progress=False, resume=True)
    metrics.write_text("\n".join([lines[0], '{"kind": "train"}', *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="line 2 has no step number"):
        tr.train(tiny(steps=4, ckpt_every=2), tmp_path, progress=False, resume=True)


# --------------------------------------------------------------------------------------
# Files: a full disk, leftovers, permissions, what is loaded
# --------------------------------------------------------------------------------------

def test_a_full_disk_says_so_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    utils.save_atomic({"x": torch.ones(1)}, path)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(utils.torch, "save", full)
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    with pytest.raises(OSError, match="the disk is full; the previous c.pt is kept"):
        utils.save_atomic({"x": torch.zeros(1)}, path)
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]  # no leftover
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(1))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_file_with_code_is_refused_without_advice_to_load_it_anyway(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"f": ValueError("x")}, path)
    with pytest.raises(ValueError, match="could run code") as info:
        tr.load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_is_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / tr.CHECKPOINT)
    result = run_cli(["mmgpt.evaluate", str(tmp_path)], timeout=60)
    assert result.returncode == 2 and "not a regular file" in result.stderr


def test_a_tokenizer_whose_merges_grow_without_end_is_refused_at_once():
    merges = [(97, 97)] + [(261 + r, 261 + r) for r in range(40)]  # doubling tokens
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="the merges are damaged"):
        BPETokenizer(merges)
    assert time.perf_counter() - t0 < 1


def test_evaluate_refuses_a_checkpoint_whose_parts_do_not_belong_together(tmp_path):
    tr.train(tiny(steps=2), tmp_path, progress=False)
    ckpt = tr.load_checkpoint(tmp_path / tr.CHECKPOINT)
    lost = dict(ckpt, tokenizer=dict(ckpt["tokenizer"], merges=ckpt["tokenizer"]["merges"][:-10]))
    with pytest.raises(ValueError, match="tokenizer has .* tokens but its model reads"):
        tr.model_from_checkpoint(lost)
    nan = dict(ckpt, model={k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                            for k, v in ckpt["model"].items()})
    with pytest.raises(ValueError, match="weights are not finite"):
        tr.model_from_checkpoint(nan)
    with pytest.raises(ValueError, match="has no train_config"):
        tr.config_from_checkpoint({k: v for k, v in ckpt.items() if k != "train_config"})
    with pytest.raises(ValueError, match=r"does not know: \['warp_speed'\]"):
        tr.config_from_checkpoint(dict(ckpt, train_config=dict(ckpt["train_config"], warp_speed=9)))


# --------------------------------------------------------------------------------------
# The model's API edges
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultimodalGPT(MultimodalGPTConfig(dim=32, num_heads=2, num_layers=1)).eval()


def ids(batch=2, length=6):
    x = torch.randint(0, 250, (batch, length))
    x[:, 0], x[:, 1] = 257, 259  # <bos> <image>
    return x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_images_of_another_dtype_are_named(model, dtype):
    with pytest.raises(TypeError, match=f"images are {dtype}"):
        model(torch.rand(2, 3, 32, 32, dtype=dtype), ids())


def test_an_empty_batch_and_a_batch_with_nothing_to_predict_are_named(model):
    with pytest.raises(ValueError, match="at least one image"):
        model(torch.rand(0, 3, 32, 32), ids(0))
    with pytest.raises(ValueError, match="labels has no token to predict"):
        model(torch.rand(2, 3, 32, 32), ids(), torch.full((2, 6), -100))


def test_pixels_in_0_255_are_named_where_images_come_in(model):
    from mmgpt.data import Collate

    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        model.generate(torch.rand(1, 3, 32, 32) * 255, ids(1, 3), 2)
    sample = dict(image=torch.rand(3, 32, 32) * 255, question="what?", answer="yes")
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        Collate(BPETokenizer())([sample])


def test_a_bool_is_not_a_token_id(model):
    with pytest.raises(ValueError, match="eos_id must be"):
        model.generate(torch.rand(1, 3, 32, 32), ids(1, 3), 2, eos_id=True)


def test_bench_and_evaluate_report_bad_settings_in_one_line(tmp_path):
    bad = run_cli(["mmgpt.bench", "--preset", "tiny", "--device", "warp-drive", "--steps", "1"])
    assert bad.returncode == 2 and "device must be" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli(["mmgpt.bench", "--preset", "tiny", "--set", "model.dim=7", "--steps", "1"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-1500:]
