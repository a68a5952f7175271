"""The GPU path, proven without a GPU: the reduced-precision and compiled training steps run
for real on the CPU, data workers are capped by the machine, a rendered pool is the data
set it was rendered from, bench times train's own step, and the peak table knows the names
GPUs really report. (Which dtype autocast picks per compute capability: tests/test_utils.py.)
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from mmgpt import bench as bn
from mmgpt import evaluate as ev
from mmgpt import train as tr
from mmgpt.data import RenderedPool, ShapesDataset


def tiny(**overrides) -> tr.TrainConfig:
    overrides.setdefault("eval_every", 1_000)
    overrides.setdefault("eval_size", 8)  # evaluations run on 8 scenes: no test reads their accuracy
    return tr.TrainConfig.from_preset("tiny", **overrides)


@pytest.mark.parametrize("amp, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_reduced_precision_steps_train_with_the_scaler_where_fp16_needs_it(tmp_path, amp, dtype):
    # The very code path a T4 (fp16 + GradScaler) or an A100 (bf16, no scaler) takes, with the
    # CPU's autocast: the matmuls really run in 16 bits, the loss stays finite and falls.
    # Ten steps (fp16 convolutions are slow on a CPU), every one logged: the loss falls by
    # 0.5 from the first step to the last, measured, where 0.3 is asked.
    result = tr.train(tiny(steps=10, amp=amp, device="cpu", eval_every=10, log_every=1),
                      tmp_path, progress=False)
    curve = [r["loss"] for r in ev.load_metrics(tmp_path)["train"]]
    assert len(curve) == 10 and all(math.isfinite(x) for x in curve), curve
    assert curve[-1] < curve[0] - 0.3, curve
    scaler = tr.load_checkpoint(tmp_path / tr.CHECKPOINT)["scaler"]
    if dtype == torch.float16:
        assert scaler and scaler["scale"] > 0  # a scaler ran and its state is saved
    else:
        assert not scaler  # bf16 has fp32's range: no scaler
    assert 0 <= result["eval"]["test"]["all"] <= 1


def test_autocast_really_computes_in_half_precision_on_the_training_path():
    # The logits of a reduced-precision forward differ from fp32's by about the 16-bit
    # rounding: proof that autocast is on, not silently ignored.
    from mmgpt.model import MultimodalGPT, MultimodalGPTConfig

    torch.manual_seed(0)
    model = MultimodalGPT(MultimodalGPTConfig(dim=32, num_heads=2, num_layers=1)).eval()
    images, ids = torch.rand(2, 3, 32, 32), torch.randint(0, 256, (2, 8))
    ids[:, 1] = model.config.image_token_id  # <bos> <image> question...
    with torch.no_grad():
        full, _ = model(images, ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = model(images, ids)
    gap = (full - half.float()).abs().max().item()
    assert 1e-4 < gap < 0.5, gap


def test_a_compiled_model_trains(tmp_path):
    # two steps (each new sequence length compiles again, and compiling takes the time)
    result = tr.train(tiny(steps=2, log_every=1, compile=True, device="cpu", eval_every=2),
                      tmp_path, progress=False)
    curve = [r["loss"] for r in ev.load_metrics(tmp_path)["train"]]
    assert result["step"] == 2 and len(curve) == 2 and all(math.isfinite(x) for x in curve)
    # the checkpoint holds the plain model's names, loadable without compiling
    ckpt = tr.load_checkpoint(tmp_path / tr.CHECKPOINT)
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])
    tr.model_from_checkpoint(ckpt)


@pytest.mark.parametrize("cores, local_world, requested, expected", [
    ((0, 1), None, 6, 1),            # Colab: two cores, the gpu preset's six workers -> one
    ((0,), None, 4, 0),              # one core: no workers, the main process renders
    (tuple(range(16)), None, 6, 6),  # enough cores: as asked
    (tuple(range(8)), "2", 6, 3),    # two torchrun processes share eight cores
])
def test_workers_are_capped_by_the_cores_this_process_may_use(monkeypatch, cores, local_world,
                                                              requested, expected):
    monkeypatch.setattr(tr.os, "sched_getaffinity", lambda pid: set(cores), raising=False)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert tr.usable_workers(requested) == expected


def test_a_rendered_pool_is_the_data_set_it_was_rendered_from():
    data = tr.TaskMix(ShapesDataset("train", 40, image_size=48, num_objects=(2, 6),
                                    families=None), 0.2)
    pool = RenderedPool(data, num_workers=0, batch_size=16)
    assert len(pool) == 40 and pool.nbytes == 40 * 3 * 48 * 48
    for i in range(40):
        a, b = data[i], pool[i]
        assert torch.equal(a["image"], b["image"])
        for key in ("caption", "question", "answer", "family"):
            assert a[key] == b[key], (i, key)


def test_a_run_that_renders_once_trains_on_the_same_batches(tmp_path):
    # Same samples, same order: the pool changes where pixels come from, not what they are.
    plain = tr.train(tiny(steps=6, train_size=64, eval_every=6), tmp_path / "plain", progress=False)
    pooled = tr.train(tiny(steps=6, train_size=64, eval_every=6, render_once=True),
                      tmp_path / "pool", progress=False)
    assert plain["loss"] == pooled["loss"]


def test_render_once_refuses_a_pool_bigger_than_memory_allows():
    with pytest.raises(ValueError, match="render_once keeps train_size scenes in memory"):
        tiny(render_once=True, train_size=10_000_000, image_size=64)


def test_bench_times_the_step_train_takes_and_the_data_apart(monkeypatch):
    calls = []
    real = tr.train_step

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bn, "train_step", counting)
    result = bn.bench(tiny(device="cpu"), steps=3, warmup=1, data_batches=3)
    assert len(calls) == 4  # warm-up and timed steps are train's step, nothing else
    assert result["samples_per_s"] > 0 and result["data_samples_per_s"] > 0
    assert result["data_over_step"] == pytest.approx(
        result["data_samples_per_s"] / result["samples_per_s"])
    assert result["mfu"] is None  # a CPU has no entry in the peak table


def test_train_takes_the_shared_step(monkeypatch, tmp_path):
    calls = []
    real = tr.train_step
    monkeypatch.setattr(tr, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    tr.train(tiny(steps=4), tmp_path, progress=False)
    assert len(calls) == 4


@pytest.mark.parametrize("name, peak", [
    ("Tesla T4", 65.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA A10G", 70.0),
    ("NVIDIA A10", 125.0),
    ("NVIDIA A100-SXM4-40GB", 312.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA H100 80GB HBM3", 989.0),   # the SXM card's name says neither "SXM" nor "PCIe"
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA GeForce RTX 4090", 165.2),
    ("Some Future GPU", None),
])
def test_peaks_match_the_names_gpus_report(name, peak):
    assert bn.peak_tflops(torch.device("cuda"), name) == peak
    assert bn.peak_tflops(torch.device("cpu")) is None


# --------------------------------------------------------------------------------------
# Recording a run (what a GPU reader runs in Colab: nothing outside the package)
# --------------------------------------------------------------------------------------

def test_record_trains_then_writes_what_ran_where_and_how_well(tmp_path):
    from mmgpt import record

    out = tmp_path / "run"
    args = ["--preset", "tiny", "--out", str(out), "--no-progress", "--bench-steps", "2",
            "--eval-size", "20", "--set", "steps=6", "--set", "stop_at_never=1"]
    with pytest.raises(SystemExit):  # an unknown field is refused before anything runs
        record.main(args)
    assert not (out / "environment.json").exists()
    args = args[:-2]
    assert record.main(args) == 0
    for name in record.FILES:
        assert (out / name).is_file(), name
    env = json.loads((out / "environment.json").read_text())
    assert env["command"] == "python -m mmgpt.record " + " ".join(args)
    assert env["device"] == "cpu" and env["autocast"] == "None" and env["torch"] == torch.__version__
    final = json.loads((out / "final.json").read_text())
    assert final["step"] == 6 and final["eval_size"] == 20 and "all" in final["test"]
    with pytest.raises(SystemExit):  # a second run into the same folder is refused
        record.main(args)


def test_record_finish_records_a_run_the_train_command_made(tmp_path):
    from mmgpt import record

    tr.train(tiny(steps=4), tmp_path / "run", progress=False)
    command = "python -m mmgpt.train --preset tiny --out run --set steps=4"
    final = record.finish(str(tmp_path / "run"), str(tmp_path / "rec"), command, eval_size=10,
                          commit="abc1234", wall_seconds=12.5, bench_steps=2)
    env = json.loads((tmp_path / "rec" / "environment.json").read_text())
    assert env["command"] == command and env["commit"] == "abc1234"
    assert json.loads((tmp_path / "rec" / "wall.json").read_text())["train_wall_seconds"] == 12.5
    assert (tmp_path / "rec" / "metrics.jsonl").read_text() == (tmp_path / "run" / "metrics.jsonl").read_text()
    assert final["step"] == 4
    assert json.loads((tmp_path / "rec" / "bench.json").read_text())["samples_per_s"] > 0


def test_the_recorded_full_task_run_is_the_gpu_preset():
    # Chapter 11 shows mmgpt/results/cpu-full as "the gpu preset's recipe": it must be that
    # recipe (a CPU run may only differ in where it runs and how many data workers it starts),
    # trained to the end, with its final evaluation on the held-out splits.
    import pathlib

    from mmgpt import record
    from mmgpt.model import config_dict

    folder = pathlib.Path(tr.__file__).parent / "results" / "cpu-full"
    for name in record.FILES:
        assert (folder / name).is_file(), name
    recorded = json.loads((folder / "train_config.json").read_text())
    preset = config_dict(tr.TrainConfig.from_preset("gpu"))
    # A field added to TrainConfig after the run is absent from its record: the preset must
    # leave it at its default (what the run did without it).
    defaults = config_dict(tr.TrainConfig())
    differs = sorted(k for k in preset if recorded.get(k, defaults[k]) != preset[k])
    assert set(differs) <= {"num_workers", "device"}, differs
    env = json.loads((folder / "environment.json").read_text())
    assert env["command"].startswith("python -m mmgpt.train --preset gpu ")
    assert env["commit"] and env["device"] == "cpu"
    final = json.loads((folder / "final.json").read_text())
    assert final["step"] == preset["steps"] and final["eval_size"] == 2000
    steps = [r["step"] for r in ev.load_metrics(folder / "metrics.jsonl")["train"]]
    assert steps == sorted(set(steps)) and steps[-1] == preset["steps"]
