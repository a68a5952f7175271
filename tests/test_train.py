"""Training and evaluation: short real runs of mmgpt.train on the shapes scenes.

Loss falls; a resumed run is the uninterrupted run, bit for bit; SIGTERM leaves a loadable
checkpoint; two torchrun processes give one process's losses; evaluation is right on a
hand-made case; the command line rejects bad arguments with a message.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mmgpt import evaluate as ev
from mmgpt import train as tr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**overrides) -> tr.TrainConfig:
    overrides.setdefault("eval_every", 1_000)
    overrides.setdefault("eval_size", 8)  # evaluations run on 8 scenes: no test reads their accuracy
    return tr.TrainConfig.from_preset("tiny", **overrides)


def losses(out_dir) -> dict:
    return {r["step"]: r["loss"] for r in ev.load_metrics(out_dir)["train"]}


def run_cli(args, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300, **kwargs)


# --------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------

def test_batches_are_a_function_of_seed_and_step_and_split_over_ranks():
    c = tiny(batch_size=8)
    assert tr.step_indices(3, c) == tr.step_indices(3, c)
    assert tr.step_indices(3, c) != tr.step_indices(4, c)
    assert tr.step_indices(3, c) != tr.step_indices(3, tiny(batch_size=8, seed=1))
    both = tr.step_indices(3, c, 0, 2) + tr.step_indices(3, c, 1, 2)
    assert sorted(both) == sorted(tr.step_indices(3, c))


def test_schedule_warms_up_then_decays_to_min_lr():
    c = tiny(steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    lrs = [tr.lr_at(s, c) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # never increases after warm-up
    assert tr.lr_at(100, c) == pytest.approx(0.1)


def test_optimizer_decays_matrices_but_not_norms_biases_or_tables():
    from mmgpt.model import MultimodalGPT, MultimodalGPTConfig

    model = MultimodalGPT(MultimodalGPTConfig(dim=32, num_heads=2, num_layers=1))
    decay, no_decay = tr.make_optimizer(model, tiny()).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed and kept and not decayed & kept
    assert len(decayed) + len(kept) == len(names)
    assert all("bias" not in n and "ln" not in n and "emb" not in n for n in decayed)
    assert any("tok_emb" in n for n in kept)


def test_task_mix_turns_a_fixed_share_into_caption_samples():
    from mmgpt.data import ShapesDataset

    mix = tr.TaskMix(ShapesDataset("train", 4000), 0.25, seed=0)
    flags = [mix.is_caption(i) for i in range(4000)]
    assert 0.22 < sum(flags) / 4000 < 0.28
    i = flags.index(True)
    assert mix[i]["family"] == "caption" and mix[i]["question"] is None and mix[i]["caption"]
    j = flags.index(False)
    assert mix[j]["question"] and mix[j]["family"] != "caption"


@pytest.mark.parametrize("bad, pattern", [
    (dict(steps=0), "steps must be a positive int"),
    (dict(lr=1e-3, min_lr=1e-2), "min_lr <= lr"),
    (dict(amp="fp8"), "amp must be"),
    (dict(caption_fraction=1.5), "caption_fraction"),
    (dict(model={"vocab_size": 10}), "must not set"),
    (dict(model={"nonsense": 1}), "unknown MultimodalGPTConfig fields"),
])
def test_config_rejects_bad_values(bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny(**bad)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        tr.TrainConfig.from_preset("huge")


def test_a_config_holds_only_plain_values():
    # Checkpoints store the config as a dict and are read with weights_only=True, so every
    # field must be a plain value (a method once hid behind the `preset` field's default).
    for config in (tr.TrainConfig(), tiny()):
        assert config.preset in ("custom", "tiny")
        for name, value in dataclasses.asdict(config).items():
            assert isinstance(value, (str, int, float, bool, type(None), tuple, list, dict)), name


def test_exact_match_on_a_hand_made_case():
    # Vocabulary of 4; sequences of 4 tokens; positions 2 and 3 are the answer.
    ids = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    mask = torch.tensor([[False, False, True, True]] * 3)
    logits = torch.zeros(3, 4, 4)
    # Row 0: predicts both answer tokens. Row 1: second wrong. Row 2: first wrong only.
    for row, (a, b) in enumerate([(2, 3), (2, 0), (1, 3)]):
        logits[row, 1, a] = 1  # position 1 predicts token 2
        logits[row, 2, b] = 1  # position 2 predicts token 3
        logits[row, 0, 3] = 1  # a wrong guess in the prompt does not matter
    assert ev.exact_match(logits, ids, mask).tolist() == [True, False, False]


# --------------------------------------------------------------------------------------
# Real runs
# --------------------------------------------------------------------------------------

def test_loss_falls_and_evaluation_is_reported(tmp_path):
    result = tr.train(tiny(steps=40, eval_every=40), tmp_path, progress=False)
    curve = losses(tmp_path)
    assert curve[40] < curve[5] - 1.0, curve  # a nat lower after 35 steps
    evals = ev.load_metrics(tmp_path)["eval"]
    assert [e["step"] for e in evals] == [40]
    for split in ("test", "heldout", "blank"):
        assert set(evals[0][split]) == {"shape", "color", "all"}
    assert result["step"] == 40 and result["interrupted"] is None
    ckpt = tr.load_checkpoint(tmp_path / tr.CHECKPOINT)
    assert ckpt["step"] == 40


def test_resume_continues_exactly(tmp_path):
    config = tiny(steps=12, ckpt_every=1_000, log_every=1, eval_every=5)
    tr.train(config, tmp_path / "straight", progress=False)
    first = tr.train(config, tmp_path / "resumed", progress=False, stop_at=5)
    assert first["interrupted"] == "stop_at" and first["step"] == 5
    tr.train(config, tmp_path / "resumed", progress=False, resume=True)
    # resume="auto" (torchrun restarts): starts a new folder, continues one with a checkpoint.
    tr.train(config, tmp_path / "auto", progress=False, resume="auto", stop_at=7)
    tr.train(config, tmp_path / "auto", progress=False, resume="auto")
    for other in ("resumed", "auto"):
        assert losses(tmp_path / "straight") == losses(tmp_path / other)
        # a pause at an evaluation step (5) keeps that evaluation, as the straight run has it
        evals = [ev.load_metrics(tmp_path / name)["eval"] for name in ("straight", other)]
        assert [e["step"] for e in evals[1]] == [5, 10, 12]
        assert evals[0] == evals[1]
        a = tr.load_checkpoint(tmp_path / "straight" / tr.CHECKPOINT)["model"]
        b = tr.load_checkpoint(tmp_path / other / tr.CHECKPOINT)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="resume must be True, False or 'auto'"):
        tr.train(config, tmp_path / "auto", progress=False, resume="yes")


def test_resume_refuses_another_config_and_a_fresh_run_refuses_an_old_folder(tmp_path):
    tr.train(tiny(steps=3), tmp_path, progress=False)
    with pytest.raises(ValueError, match="differs in.*lr"):
        tr.train(tiny(steps=3, lr=5e-3), tmp_path, progress=False, resume=True)
    with pytest.raises(FileExistsError, match="already holds a run"):
        tr.train(tiny(steps=3), tmp_path, progress=False)


def test_a_truncated_checkpoint_is_refused_with_a_message(tmp_path):
    tr.train(tiny(steps=2), tmp_path, progress=False)
    path = tmp_path / tr.CHECKPOINT
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        tr.load_checkpoint(path)


def test_sigterm_saves_a_loadable_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmgpt.train", "--preset", "tiny", "--out", str(tmp_path),
         "--no-progress", "--set", "steps=100000", "--set", "log_every=1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / tr.METRICS
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # 128 + SIGTERM, as shells and schedulers expect
    assert json.loads(out)["interrupted"] == "SIGTERM"
    ckpt = tr.load_checkpoint(tmp_path / tr.CHECKPOINT)
    assert 3 <= ckpt["step"] < 100000
    model, tokenizer = tr.model_from_checkpoint(ckpt)
    assert model.config.vocab_size == tokenizer.vocab_size


def test_two_processes_give_the_losses_of_one(tmp_path):
    # A patch encoder (no batch norm): each process normalises nothing over its half of the
    # batch, so the two halves make exactly the global batch's gradient.
    args = ["--preset", "tiny", "--no-progress", "--set", "steps=6", "--set", "log_every=1",
            "--set", "eval_every=1000", "--set", "eval_size=8", "--set", 'model.encoder="patch"']
    one = run_cli(["mmgpt.train", "--out", str(tmp_path / "one"), *args])
    assert one.returncode == 0, one.stderr
    two = run_cli(["torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "mmgpt.train", "--out", str(tmp_path / "two"), *args])
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert a.keys() == b.keys() == set(range(1, 7))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-5), (step, a[step], b[step])


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, pattern", [
    (["--preset", "tiny", "--set", "nonsense=1"], "unknown field 'nonsense'"),
    (["--preset", "tiny", "--set", "steps"], "expects name=value"),
    (["--preset", "galaxy"], "unknown preset 'galaxy'"),
    (["--preset", "tiny", "--set", "steps=-3"], "steps must be a positive int"),
    (["--preset", "tiny", "--resume"], "no checkpoint at"),
])
def test_cli_rejects_bad_arguments(tmp_path, args, pattern):
    result = run_cli(["mmgpt.train", "--out", str(tmp_path / "run"), *args])
    assert result.returncode == 2
    assert pattern in result.stderr


def test_evaluate_cli_prints_a_table(tmp_path):
    tr.train(tiny(steps=2), tmp_path, progress=False)
    result = run_cli(["mmgpt.evaluate", str(tmp_path), "--size", "32"])
    assert result.returncode == 0, result.stderr
    assert "family" in result.stdout and "caption exact match" in result.stdout
    bad = run_cli(["mmgpt.evaluate", str(tmp_path / "nowhere")])
    assert bad.returncode == 2 and "no checkpoint at" in bad.stderr


def test_fine_tuning_starts_from_a_checkpoint_and_frozen_parts_do_not_move(tmp_path):
    tr.train(tiny(steps=4, caption_fraction=1.0), tmp_path / "pre", progress=False)
    pre = tr.load_checkpoint(tmp_path / "pre" / tr.CHECKPOINT)
    config = tiny(steps=3, init_from=str(tmp_path / "pre" / tr.CHECKPOINT), freeze=("encoder",))
    result = tr.train(config, tmp_path / "fine", progress=False)
    fine = tr.load_checkpoint(tmp_path / "fine" / tr.CHECKPOINT)
    assert fine["tokenizer"] == pre["tokenizer"]
    encoder = [k for k in pre["model"] if k.startswith("encoder.")]
    decoder = [k for k in pre["model"] if k.startswith("decoder.") and "weight" in k]
    assert encoder and all(torch.equal(pre["model"][k], fine["model"][k]) for k in encoder)
    assert any(not torch.equal(pre["model"][k], fine["model"][k]) for k in decoder)
    assert result["frozen_parameters"] > 0
    with pytest.raises(ValueError, match="matches no parameter"):
        tr.train(tiny(steps=1, freeze=("vision",)), tmp_path / "bad", progress=False)


@pytest.mark.parametrize("preset", sorted(tr.PRESETS))
def test_every_preset_trains_a_step_and_evaluates(preset, tmp_path):
    # The presets' data, model and evaluation fit together (the gpu preset's longest caption
    # fits its context, its model builds), checked on the CPU with a tiny batch.
    config = tr.TrainConfig.from_preset(preset, steps=1, batch_size=4, eval_size=4,
                                        tokenizer_corpus=500, num_workers=0, device="cpu",
                                        train_size=64)
    result = tr.train(config, tmp_path, progress=False)
    assert result["step"] == 1 and set(result["eval"]["test"]) >= {"all"}


# --------------------------------------------------------------------------------------
# Added with issue 16
# --------------------------------------------------------------------------------------

def _decayed_by_class_name(model) -> set:
    """The rule make_optimizer used before it chose by role: a >= 2-D parameter decays
    unless its module is an nn.Embedding or has "Position" in its class name."""
    tables = {id(p) for m in model.modules()
              if isinstance(m, torch.nn.Embedding) or "Position" in type(m).__name__
              for p in m.parameters(recurse=False)}
    return {n for n, p in model.named_parameters() if p.dim() >= 2 and id(p) not in tables}


@pytest.mark.parametrize("preset", sorted(tr.PRESETS))
def test_weight_decay_groups_by_role_are_the_ones_the_class_name_rule_chose(preset):
    from mmgpt.model import MultimodalGPT, MultimodalGPTConfig

    for variant in ({}, {"encoder": "patch", "patch_size": 4}, {"fusion": "cross"},
                    {"fusion": "late"}, {"image_pos": "learned"}, {"tie_weights": False}):
        config = tr.TrainConfig.from_preset(preset, model=variant)
        model = MultimodalGPT(MultimodalGPTConfig(vocab_size=config.vocab_size,
                                                  image_size=config.image_size, **config.model))
        decay, no_decay = tr.make_optimizer(model, config).param_groups
        names = {id(p): n for n, p in model.named_parameters()}
        assert {names[id(p)] for p in decay["params"]} == _decayed_by_class_name(model), variant
        assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_the_training_checkpoint_holds_the_model_file_and_one_reader_reads_it(tmp_path):
    from mmgpt.model import MultimodalGPT

    tr.train(tiny(steps=2), tmp_path / "run", progress=False)
    path = tmp_path / "run" / tr.CHECKPOINT
    ckpt = tr.load_checkpoint(path)
    model, _ = tr.model_from_checkpoint(ckpt)
    model.save(tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(saved) <= set(ckpt) and saved["model_config"] == ckpt["model_config"]
    assert saved["model"].keys() == ckpt["model"].keys()
    assert all(torch.equal(saved["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    assert torch.equal(MultimodalGPT.load(path).decoder.ln_f.weight, model.decoder.ln_f.weight)
    # init_from with another model: the reader's error, naming the file and what differs
    other = tiny(steps=1, init_from=str(path), model=dict(dim=64, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match=r"train: init_from=.*checkpoint.pt does not fit the "
                                         r"config asked for; it differs in dim: checkpoint 32"):
        tr.train(other, tmp_path / "other", progress=False)
    # the one evaluation of a run (mmgpt.record and python -m mmgpt.evaluate call it)
    result, config = tr.evaluate_run(tmp_path / "run", eval_size=4)
    assert result["step"] == 2 and "all" in result["test"]
    assert config == tr.config_from_checkpoint(ckpt) and config.eval_size == 8
