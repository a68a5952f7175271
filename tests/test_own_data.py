"""Training, evaluating and asking on a folder of one's own images (issue 17), end to end on
tiny folders of coloured squares drawn here: the commands and their Python API, the split
held out by image, the checks made before training (a text too long for the context), a
model never read with another tokenizer, and the command lines' errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from mmgpt import train as tr
from mmgpt.ask import ask, load_model
from mmgpt.ask import main as ask_main
from mmgpt.evaluate import load_metrics
from mmgpt.evaluate.__main__ import main as evaluate_main
from mmgpt.tokenizer import BPETokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (230, 210, 40)}


def make_folder(root, n: int = 24, index: str = "index.jsonl", start: int = 0):
    """``n`` squares of four colours (sizes vary, as photos do), each with a caption and a
    question: as separate lines for even images, on one line for odd ones."""
    os.makedirs(root, exist_ok=True)
    lines = []
    for i in range(start, start + n):
        name = list(COLORS)[i % 4]
        Image.new("RGB", (12 + i % 7, 10 + i % 5), COLORS[name]).save(os.path.join(root, f"{i}.png"))
        caption = {"caption": f"a {name} square"}
        qa = {"question": "what colour is it?", "answer": name, "family": "color"}
        lines += ([{"image": f"{i}.png", **caption}, {"image": f"{i}.png", **qa}] if i % 2 == 0
                  else [{"image": f"{i}.png", **caption, **qa}])
    with open(os.path.join(root, index), "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))
    return str(root)


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "squares")


def tiny(data, **overrides) -> tr.TrainConfig:
    overrides.setdefault("steps", 4)
    overrides.setdefault("eval_every", 4)
    overrides.setdefault("ckpt_every", 2)
    return tr.TrainConfig.from_preset("tiny", data=data, model=dict(context_length=24), **overrides)


def keys(tasks) -> set:
    return {tasks.folder.image_key(i) for i, _ in tasks.items}


def run_cli(args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)


def cli_error(main, argv, capsys) -> str:
    """Run a command line's ``main`` in-process; it must exit 2 with a message."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


# --------------------------------------------------------------------------------------
# The data of a run
# --------------------------------------------------------------------------------------

def test_a_folder_is_split_by_image_and_captions_and_questions_are_its_own_mix(folder):
    datasets = tr.build_datasets(tiny(folder, val_fraction=0.25))
    train, test = datasets["train"], datasets["test"]
    assert keys(train) and keys(test) and not keys(train) & keys(test)  # no image on both sides
    assert len(keys(train) | keys(test)) == 24 and len(keys(test)) == 6
    # every line's caption and question are samples: 24 images, each a caption and a question
    assert len(train) + len(test) == 48
    kinds = [(s["family"], s["question"] is None, s["caption"] is None)
             for s in map(train.describe, range(len(train)))]
    assert set(kinds) == {("caption", True, False), ("color", False, True)}
    assert keys(tr.build_datasets(tiny(folder, val_fraction=0.25))["test"]) == keys(test)  # by seed
    assert keys(tr.build_datasets(tiny(folder, val_fraction=0.25, seed=3))["test"]) != keys(test)


def test_a_folder_with_its_own_split_keeps_it(tmp_path):
    root = make_folder(tmp_path / "own", 8, index="train.jsonl")
    make_folder(root, 4, index="test.jsonl", start=8)
    datasets = tr.build_datasets(tiny(root))
    assert len(keys(datasets["train"])) == 8 and len(keys(datasets["test"])) == 4
    assert datasets["test"].folder.index.name == "test.jsonl"


def test_the_tokenizer_is_trained_on_the_training_side_texts(folder):
    config = tiny(folder)
    datasets = tr.build_datasets(config)
    texts = [s[f] for s in map(datasets["train"].describe, range(len(datasets["train"])))
             for f in ("caption", "question", "answer") if s[f] is not None]
    tokenizer = tr.build_tokenizer(config)
    assert tokenizer == BPETokenizer.train(texts, config.vocab_size)
    assert len(tokenizer.encode(" square")) < len(" square")  # it learned the folder's words
    assert tokenizer.decode(tokenizer.encode("a purple cube")) == "a purple cube"  # byte-level: any text


def test_a_text_too_long_for_the_context_is_reported_before_training(folder, tmp_path):
    with open(os.path.join(folder, "index.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps({"image": "3.png", "caption": "a square " * 20}) + "\n")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"context_length=24 .* index\.jsonl:37 .* model\.context_length=45"):
        tr.train(tiny(folder), out, progress=False)
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()
    assert not (out / "tokenizer.json").exists()


def test_bad_lines_are_an_error_naming_them_or_with_data_strict_false_skipped(folder):
    with open(os.path.join(folder, "index.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps({"image": "../outside.png", "caption": "out"}) + "\n")
        f.write(json.dumps({"image": "missing.png", "caption": "gone"}) + "\n")
    with pytest.raises(ValueError, match=r"2 bad line\(s\)(.|\n)*index\.jsonl:37: .*outside(.|\n)*index\.jsonl:38"):
        tr.build_datasets(tiny(folder))
    with pytest.warns(UserWarning, match=r"skipped 2 bad line\(s\)") as caught:
        datasets = tr.build_datasets(tiny(folder, data_strict=False))
    assert len(caught) == 1  # the index is read once, for both sides
    assert len(datasets["train"]) + len(datasets["test"]) == 48


# --------------------------------------------------------------------------------------
# The commands, end to end
# --------------------------------------------------------------------------------------

def test_train_resume_evaluate_and_ask_on_a_folder(folder, tmp_path, capsys):
    out = tmp_path / "run"
    whole = tr.train(tiny(folder), tmp_path / "whole", progress=False)
    first = tr.train(tiny(folder), out, progress=False, stop_at=2)
    assert first["interrupted"] == "stop_at" and first["step"] == 2
    # the command line resumes it with the settings in its checkpoint, the folder among them
    done = run_cli(["mmgpt.train", "--out", str(out), "--resume", "--no-progress"])
    assert done.returncode == 0, done.stderr
    losses = {r["step"]: r["loss"] for r in load_metrics(out)["train"]}
    assert losses == pytest.approx({r["step"]: r["loss"] for r in load_metrics(tmp_path / "whole")["train"]})
    last = load_metrics(out)["eval"][-1]
    assert last["step"] == 4 and set(last["test"]) == {"caption", "color", "all"}
    assert set(last["majority"]) == set(last["text_only"]) == {"color"}
    assert whole["eval"]["test"] == last["test"]

    # evaluate: the run's own folder means its held-out side; another folder all of it
    assert evaluate_main([str(out), "--data", folder, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == last["test"]
    assert tr.evaluate_run(out, data=os.path.join(folder, "index.jsonl"))[0]["test"] == last["test"]
    other = make_folder(tmp_path / "other", 6, start=100)
    assert evaluate_main([str(out), "--data", other]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["family", "test", "blank", "majority", "text_only"]
    result, _ = tr.evaluate_run(out, data=other)
    assert result["majority"]["color"] == pytest.approx(2 / 6)  # 6 squares, two of them red
    assert result["step"] == 4

    # ask: the command line and the function, by run or by model, path or tensor
    image = os.path.join(folder, "5.png")
    assert ask_main([str(out), image, "what colour is it?"]) == 0
    answer = capsys.readouterr().out.strip()
    model, tokenizer = load_model(out)
    assert ask(out, image, "what colour is it?") == answer
    assert ask(model, image, "what colour is it?", tokenizer=tokenizer) == answer
    caption = ask(out, image)
    assert isinstance(caption, str)
    assert ask(model, torch.rand(3, 40, 30), tokenizer=tokenizer, max_new_tokens=3) is not None
    cli = run_cli(["mmgpt.ask", str(out), image])
    assert cli.returncode == 0 and cli.stdout.strip() == caption


def test_a_model_is_never_read_with_another_tokenizer(folder, tmp_path):
    out = tmp_path / "run"
    tr.train(tiny(folder, steps=2, eval_every=2), out, progress=False)
    model, tokenizer = load_model(out)
    other = BPETokenizer.train(["something else entirely"] * 3, 270)
    with pytest.raises(ValueError, match="not the model's"):
        ask(model, os.path.join(folder, "1.png"), tokenizer=other)
    other.save(out / "tokenizer.json")  # the files of two runs mixed up
    for read in (lambda: tr.evaluate_run(out), lambda: ask(out, os.path.join(folder, "1.png"))):
        with pytest.raises(ValueError, match="is not the tokenizer .* was trained with"):
            read()


def test_a_run_whose_training_folder_is_gone_evaluates_elsewhere_without_baselines(tmp_path):
    folder = make_folder(tmp_path / "squares", 8)
    tr.train(tiny(folder, steps=1, eval_every=1, ckpt_every=1), tmp_path / "run", progress=False)
    os.rename(folder, tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="squares does not exist"):
        tr.evaluate_run(tmp_path / "run")
    with pytest.warns(UserWarning, match="baselines are left out"):
        result, _ = tr.evaluate_run(tmp_path / "run", data=tmp_path / "moved")
    assert "text_only" not in result and set(result["test"]) == {"caption", "color", "all"}


# --------------------------------------------------------------------------------------
# Errors at the command lines
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("own")
    folder = make_folder(base / "squares", 8)
    tr.train(tiny(folder, steps=1, eval_every=1, ckpt_every=1), base / "run", progress=False)
    return folder, str(base / "run")


@pytest.mark.parametrize("args, pattern", [
    (["--data", "{tmp}/nowhere"], "nowhere does not exist"),
    (["--data", "{folder}", "--set", "val_fraction=1"], r"val_fraction must be a number in \(0, 1\)"),
    (["--data", "{folder}", "--set", "model.context_length=6"], r"context_length=6 .* model.context_length="),
])
def test_train_cli_refuses_bad_data_arguments(args, pattern, trained, tmp_path, capsys):
    folder, _ = trained
    args = [a.format(tmp=tmp_path, folder=folder) for a in args]
    err = cli_error(tr.main, ["--out", str(tmp_path / "run"), "--preset", "tiny", *args], capsys)
    assert pattern and re.search(pattern, err), err


def test_ask_and_evaluate_cli_name_what_is_wrong(trained, tmp_path, capsys):
    folder, run = trained
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    cases = [
        (ask_main, [str(tmp_path / "norun"), os.path.join(folder, "1.png")], "no checkpoint at .*norun"),
        (ask_main, [run, str(tmp_path / "none.png")], "image file .*none.png does not exist"),
        (ask_main, [run, str(broken)], "broken.png cannot be read as an image"),
        (ask_main, [run, os.path.join(folder, "1.png"), "why " * 30], "leaves no room for an answer"),
        (ask_main, [run, os.path.join(folder, "1.png"), " "], "question must be a non-empty string"),
        (evaluate_main, [run, "--data", str(tmp_path / "nodata")], "nodata does not exist"),
        (evaluate_main, [str(tmp_path / "norun")], "no checkpoint at"),
    ]
    for main, argv, pattern in cases:
        err = cli_error(main, argv, capsys)
        assert re.search(pattern, err), (argv, err)
