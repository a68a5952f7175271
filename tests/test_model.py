"""Tests for ``mmgpt.model``: the multimodal GPT with each of its three fusions.

* shapes for every fusion and both image encoders, at 32 and 64 pixels; the loss is
  ``F.cross_entropy`` of the shifted logits and labels; ``make_labels`` equals the data
  pipeline's labels and a real batch (``ShapesDataset`` + ``BPETokenizer`` + ``Collate``) runs;
* at initialisation the cross-attention model *is* the text-only decoder, for any image;
* prefix fusion: one placeholder or ``N`` of them give the same text outputs; the text
  before the image does not see it; every fusion is causal;
* generation with the KV cache gives the tokens of full recomputation (greedy and sampled,
  with ``eos_id``), for every fusion;
* checkpoints: save/load round trip (same outputs), atomic writes, and clear errors for a
  truncated, foreign, tampered or mismatched file;
* bad configs and bad inputs raise errors that name the problem;
* a few optimisation steps reduce the loss on a fixed batch, for every fusion.

Models are tiny (width 32, two layers) so the file runs in seconds.
"""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

from mmgpt.conv import Conv2d
from mmgpt.fusion import FUSIONS
from mmgpt.model import MultimodalGPT, MultimodalGPTConfig, make_labels

V, IMAGE = 60, 59  # a small vocabulary whose last id is the <image> placeholder
SMALL = dict(vocab_size=V, image_token_id=IMAGE, context_length=16, dim=32, num_layers=2,
             num_heads=2, cnn_widths=(8, 16, 16))


def _model(fusion="prefix", seed=0, **overrides) -> MultimodalGPT:
    torch.manual_seed(seed)
    return MultimodalGPT(MultimodalGPTConfig(**dict(SMALL, fusion=fusion, **overrides)))


def _batch(B=3, T=10, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, IMAGE, (B, T), generator=g)
    ids[:, 0], ids[:, 1] = 1, IMAGE  # <bos> <image> ...
    return torch.rand(B, 3, size, size, generator=g), ids


# ---------------------------------------------------------------------------------------------
# Shapes, loss, labels
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ["cnn", "patch"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_shapes_and_loss_for_every_fusion(fusion, encoder):
    model = _model(fusion, encoder=encoder)
    images, ids = _batch()
    labels = ids.clone()
    labels[:, :4] = -100
    logits, loss = model(images, ids, labels)
    assert logits.shape == (3, 10, V)
    assert model.num_image_tokens == 16
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    assert_close(loss, expected, "loss", 1e-5)
    assert model(images, ids)[1] is None
    counts = model.parameter_counts()
    assert sum(counts.values()) == model.num_parameters()
    assert (counts["fusion"] > 0) == (fusion == "cross")


@pytest.mark.parametrize("encoder, widths", [("cnn", None), ("patch", None), ("cnn", (8, 16, 16))])
def test_64_pixel_images(encoder, widths):
    overrides = dict(SMALL, image_size=64, encoder=encoder, cnn_widths=widths)
    config = MultimodalGPTConfig(**overrides)
    model = MultimodalGPT(config)
    images, ids = _batch(B=2, size=64)
    assert model(images, ids)[0].shape == (2, 10, V)
    if widths is None:  # the defaults keep 4x4 image tokens at 64 pixels
        assert config.image_grid == (4, 4)
        assert config.cnn_widths == (16, 32, 64, 128) and config.patch_size == 16
    else:
        assert config.image_grid == (8, 8) and model.num_image_tokens == 64


def test_make_labels_equals_the_collate_labels():
    from mmgpt.data import ShapesDataset, collate
    from mmgpt.tokenizer import BPETokenizer

    tok = BPETokenizer()  # bytes only: no training needed
    data = ShapesDataset("train", 4, families=("color", "shape"))
    batch = collate([data[i] for i in range(4)], tok)
    labels = make_labels(batch["input_ids"], batch["loss_mask"])
    assert torch.equal(labels, batch["labels"])
    assert torch.equal(make_labels(batch["input_ids"], batch["loss_mask"], ignore_index=-1),
                       batch["labels"].masked_fill(~batch["loss_mask"], -1))
    config = MultimodalGPTConfig.for_tokenizer(tok, context_length=64, dim=32, num_layers=1,
                                               num_heads=2, cnn_widths=(8, 16, 16))
    assert (config.vocab_size, config.image_token_id) == (tok.vocab_size, tok.image_id)
    logits, loss = MultimodalGPT(config)(batch["images"], batch["input_ids"], labels)
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(loss)


@pytest.mark.parametrize("args, error, match", [
    ((torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool)), ValueError, "2-D integer"),
    ((torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), TypeError, "boolean"),
    ((torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool)), ValueError,
     r"shape \(2, 3\)"),
])
def test_make_labels_rejects_bad_inputs(args, error, match):
    with pytest.raises(error, match=match):
        make_labels(*args)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fused_kernels_compute_what_the_books_code_computes(fusion):
    book = _model(fusion, fused=False).eval()
    fast = _model(fusion, fused=True).eval()
    fast.load_state_dict(book.state_dict())  # same parameters, same keys
    if fusion == "cross":
        with torch.no_grad():
            for model in (book, fast):
                for layer in model.fusion.layers:
                    layer.attn_gate.fill_(1.0)
    images, ids = _batch()
    assert_close(fast(images, ids)[0], book(images, ids)[0], "fused vs book", 1e-5)
    assert not any(isinstance(m, Conv2d) for m in fast.modules())
    assert any(isinstance(m, Conv2d) for m in book.modules())


# ---------------------------------------------------------------------------------------------
# What each fusion lets the text see
# ---------------------------------------------------------------------------------------------

def test_cross_attention_model_at_init_is_the_text_only_decoder():
    model = _model("cross").eval()
    images, ids = _batch()
    text_only, _ = model.decoder(ids)  # the GPT of Chapter 07, on the text alone
    for seed in range(3):
        images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(model(images, ids)[0], text_only)
    assert torch.equal(model.fusion.gates(), torch.zeros(2, 2))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_the_image_matters_and_the_model_is_causal(fusion):
    model = _model(fusion).eval()
    if fusion == "cross":
        with torch.no_grad():
            for layer in model.fusion.layers:
                layer.attn_gate.fill_(1.0)
    images, ids = _batch()
    logits, _ = model(images, ids)
    other = model(images.flip(-1), ids)[0]
    assert (logits - other).abs().max() > 1e-6  # another image, other logits
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % IMAGE
    assert torch.equal(model(images, changed)[0][:, :6], logits[:, :6])  # the future is hidden
    if fusion == "prefix":  # <bos> comes before the image, so it cannot see it
        assert torch.equal(other[:, 0], logits[:, 0])


def test_prefix_one_placeholder_or_n_placeholders_give_the_same_text_outputs():
    model = _model("prefix", context_length=32).eval()
    images, ids = _batch(T=8)
    N = model.num_image_tokens
    expanded = torch.cat([ids[:, :1], ids[:, 1:2].expand(-1, N), ids[:, 2:]], dim=1)
    one, _ = model(images, ids)
    many, _ = model(images, expanded)
    assert many.shape[1] == 8 + N - 1
    assert_close(one[:, 0], many[:, 0], "<bos>", 1e-5)
    assert_close(one[:, 1], many[:, N], "the placeholder = the last image token", 1e-5)
    assert_close(one[:, 2:], many[:, N + 1:], "text after the image", 1e-5)


def test_prefix_fusion_needs_the_placeholder():
    model = _model("prefix")
    images, ids = _batch()
    ids[1, 1] = 5
    with pytest.raises(ValueError, match="row 1 holds it 0 times"):
        model(images, ids)
    for other in ("cross", "late"):  # they read <image> as an ordinary token, or none at all
        logits, loss = MultimodalGPT(dataclasses.replace(model.config, fusion=other))(images, ids)
        assert logits.shape == (3, 10, V) and loss is None and bool(torch.isfinite(logits).all())


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", FUSIONS)
def test_generate_with_cache_equals_without(fusion):
    model = _model(fusion, seed=3)
    if fusion == "cross":
        with torch.no_grad():
            for layer in model.fusion.layers:
                layer.attn_gate.fill_(0.8)
                layer.mlp_gate.fill_(0.8)
    images, ids = _batch(B=2, T=5, seed=1)
    greedy = model.generate(images, ids, 8, temperature=0)
    assert greedy.shape == (2, 13) and torch.equal(greedy[:, :5], ids)
    assert torch.equal(greedy, model.generate(images, ids, 8, temperature=0, use_cache=False))
    assert not (greedy[:, 5:] == IMAGE).any()  # the placeholder is never generated
    sampled = [model.generate(images, ids, 8, top_k=5, use_cache=c,
                              generator=torch.Generator().manual_seed(7)) for c in (True, False)]
    assert torch.equal(*sampled)
    eos = int(greedy[0, 7])  # row 0 writes it by its third new token
    stopped = model.generate(images, ids, 8, temperature=0, eos_id=eos)
    assert torch.equal(stopped, model.generate(images, ids, 8, temperature=0, eos_id=eos,
                                               use_cache=False))
    first = int((stopped[0, 5:] == eos).nonzero()[0]) + 5
    assert first <= 7 and (stopped[0, first:] == eos).all()  # padded after its end
    assert model.training  # put back in its mode


def test_generate_rejects_what_does_not_fit():
    model = _model("prefix")
    images, ids = _batch(T=10)
    with pytest.raises(ValueError, match="plus max_new_tokens=7 is more than the model's "
                                         "context_length=16"):
        model.generate(images, ids, 7)
    with pytest.raises(ValueError, match="max_new_tokens must be an int"):
        model.generate(images, ids, -1)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(images, ids, 2, temperature=-1.0)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", FUSIONS)
def test_save_load_round_trip(fusion, tmp_path):
    model = _model(fusion, image_pos="learned").eval()
    images, ids = _batch()
    path = tmp_path / "model.pt"
    model.save(path)
    model.save(path)  # replacing an existing checkpoint
    assert os.listdir(tmp_path) == ["model.pt"]  # no temporary file left behind
    loaded = MultimodalGPT.load(path, config=model.config).eval()
    assert loaded.config == model.config
    assert torch.equal(loaded(images, ids)[0], model(images, ids)[0])
    assert loaded.decoder.head.weight is loaded.decoder.tok_emb.weight  # still tied


def test_load_refuses_bad_checkpoints(tmp_path):
    model = _model("prefix")
    good = tmp_path / "good.pt"
    model.save(good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        MultimodalGPT.load(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not a MultimodalGPT checkpoint"):
        MultimodalGPT.load(foreign)

    with pytest.raises(ValueError, match="differs in dim: checkpoint 32, expected 64"):
        MultimodalGPT.load(good, config=dataclasses.replace(model.config, dim=64))

    tampered = tmp_path / "tampered.pt"
    ckpt = torch.load(good, weights_only=True)
    ckpt["model"]["decoder.pos_emb.weight"] = torch.zeros(5, 32)
    torch.save(ckpt, tampered)
    with pytest.raises(ValueError, match=r"do not fit its config.*decoder.pos_emb.weight"):
        MultimodalGPT.load(tampered)

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        MultimodalGPT.load(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------
# Bad configs and inputs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, match", [
    (dict(fusion="early"), r"fusion must be one of \('prefix', 'cross', 'late'\), got 'early'"),
    (dict(encoder="vit"), "encoder must be one of"),
    (dict(dim=30, num_heads=4), "dim must be divisible by num_heads, got dim=30"),
    (dict(image_token_id=60), "image_token_id must be a token id below vocab_size=60"),
    (dict(encoder="patch", patch_size=5), "image_size divisible by patch_size, got "
                                          "image_size=32 and patch_size=5"),
    (dict(fusion="cross", cross_every=3), "cross_every=3 must be at most num_layers=2"),
    (dict(image_pos="sincos", dim=34, num_heads=2), "needs dim divisible by 4"),
    (dict(cnn_widths=(8, 0)), "cnn_widths must be None or a non-empty tuple"),
    (dict(context_length=0), "context_length must be a positive int"),
    (dict(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
    (dict(projector="resampler"), "projector must be one of"),
    (dict(cnn_norm="layer"), "cnn_norm must be one of"),
])
def test_bad_configs_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        MultimodalGPTConfig(**dict(SMALL, **overrides))


def test_model_needs_a_config():
    with pytest.raises(TypeError, match="config must be a MultimodalGPTConfig"):
        MultimodalGPT(dict(SMALL))


@pytest.mark.parametrize("change, error, match", [
    (lambda im, ids: (im[..., :28, :28], ids), ValueError, r"must be 32x32 .* got 28x28"),
    (lambda im, ids: (im[:, :1], ids), ValueError, "in_channels=3 channels"),
    (lambda im, ids: (im[0], ids), ValueError, "images must be 4-D"),
    (lambda im, ids: ((im * 255).byte(), ids), TypeError, "floating point"),
    (lambda im, ids: (im, torch.cat([ids, ids], 1)), ValueError,
     "input_ids has 20 tokens, more than the model's context_length=16"),
    (lambda im, ids: (im, ids.float()), TypeError, "integer token ids"),
    (lambda im, ids: (im, ids[0]), ValueError, r"2-D \(batch, time\)"),
    (lambda im, ids: (im, ids[:2]), ValueError, "batch size 2 but images has 3"),
    (lambda im, ids: (im, ids + V), ValueError, r"must lie in \[0, vocab_size=60\)"),
])
def test_bad_inputs_are_named(change, error, match):
    model = _model("prefix")
    images, ids = change(*_batch())
    with pytest.raises(error, match=match):
        model(images, ids)


def test_labels_must_match_the_ids():
    model = _model("late")
    images, ids = _batch()
    with pytest.raises(ValueError, match=r"labels must have input_ids' shape \(3, 10\)"):
        model(images, ids, ids[:, 1:])
    with pytest.raises(TypeError, match="labels must hold integer token ids"):
        model(images, ids, ids.float())


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(fusion):
    model = _model(fusion)
    images, ids = _batch(B=8, seed=2)
    labels = ids.masked_fill(torch.arange(10) < 2, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        _, loss = model(images, ids, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    if fusion == "cross":  # training opens the gates
        assert model.fusion.gates().abs().min() > 0


# ---------------------------------------------------------------------------------------------
# Text in, text out
# ---------------------------------------------------------------------------------------------

def test_prompt_ids_and_generate_text_follow_collate_and_generate():
    from mmgpt.data import Collate, ShapesDataset, caption_corpus
    from mmgpt.model import generate_text, prompt_ids
    from mmgpt.tokenizer import BPETokenizer

    tok = BPETokenizer.train(caption_corpus(300, seed=0), vocab_size=300)
    torch.manual_seed(0)
    model = MultimodalGPT(MultimodalGPTConfig.for_tokenizer(tok, dim=32, num_layers=1,
                                                            num_heads=2))
    sample = ShapesDataset("test", 4)[1]
    for task, question in (("qa", sample["question"]), ("caption", None)):
        ids, length = Collate(tok, task=task).encode(sample)
        assert prompt_ids(tok, question) == ids[:length]
        prompt = torch.tensor([ids[:length]])
        room = model.config.context_length - length
        out = model.generate(sample["image"][None], prompt, room, temperature=0,
                             eos_id=tok.eos_id)[0, length:].tolist()
        if tok.eos_id in out:
            out = out[: out.index(tok.eos_id)]
        expected = tok.decode(out, skip_special=True)
        assert generate_text(model, tok, sample["image"], question) == expected
    assert generate_text(model, tok, sample["image"], max_new_tokens=0) == ""
    with pytest.raises(ValueError, match="image must be one \\(C, H, W\\) tensor"):
        generate_text(model, tok, sample["image"][None], "what color is the square?")


# ---------------------------------------------------------------------------------------------
# Derived config values, one checkpoint reader, no value reads on the per-step path
# ---------------------------------------------------------------------------------------------

def test_derived_config_values_are_derived_again_by_replace():
    small = MultimodalGPTConfig(image_size=32)
    big = dataclasses.replace(small, image_size=64)
    assert big == MultimodalGPTConfig(image_size=64)  # not the 32-pixel widths and patches
    assert big.cnn_widths == (16, 32, 64, 128) and big.patch_size == 16
    chosen = MultimodalGPTConfig(image_size=32, cnn_widths=(8, 16), patch_size=4)
    kept = dataclasses.replace(chosen, image_size=64)  # values given are kept
    assert kept.cnn_widths == (8, 16) and kept.patch_size == 4
    # a saved config (plain values) loads as the same config
    from mmgpt.model import config_dict
    assert MultimodalGPTConfig(**config_dict(big)) == big
    assert config_dict(big)["cnn_widths"] == [16, 32, 64, 128]


def test_load_reads_a_training_checkpoint_with_the_same_checks(tmp_path):
    from mmgpt.model import config_dict
    from mmgpt.train import CHECKPOINT_FORMAT

    model = _model("late").eval()
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "step": 3,  # what mmgpt.train writes
                "model_config": config_dict(model.config), "model": model.state_dict(),
                "optimizer": {}}, path)
    images, ids = _batch()
    loaded = MultimodalGPT.load(path, config=model.config).eval()
    assert torch.equal(loaded(images, ids)[0], model(images, ids)[0])
    state = dict(model.state_dict())
    del state["decoder.ln_f.weight"]
    with pytest.raises(ValueError, match=r"checkpoint: the weights in .* do not fit its config: "
                                         r"Missing key.*decoder.ln_f.weight"):
        MultimodalGPT.from_checkpoint({"format": CHECKPOINT_FORMAT, "model_config":
                                       config_dict(model.config), "model": state})


@pytest.mark.parametrize("fusion", ["cross", "late"])
def test_a_training_step_reads_no_value_off_the_cpu(fusion):
    # Meta tensors have shapes but no values: reading one (int(), bool(), .item()) raises,
    # as it would stall an accelerator. Prefix fusion reads one number per batch (how many
    # placeholders a row holds decides the spliced length); the other fusions read none.
    model = _model(fusion).to("meta")
    images, ids = _batch()
    logits, loss = model(images.to("meta"), ids.to("meta"), ids.to("meta"))
    assert logits.shape == (3, 10, V) and loss.shape == ()


def test_save_writes_the_training_checkpoint_keys_and_version_1_files_still_load(tmp_path):
    # One set of keys: save's file holds the model as a training checkpoint does
    # (test_train checks that a training checkpoint holds these keys).
    from mmgpt.model import config_dict

    model = _model("prefix").eval()
    model.save(tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(saved) == {"format", "version", "model_config", "model"} and saved["version"] == 2
    # A file from save's first version (keys "config", "state_dict") loads, with the checks.
    images, ids = _batch()
    old = tmp_path / "old.pt"
    torch.save({"format": saved["format"], "version": 1, "config": config_dict(model.config),
                "state_dict": model.state_dict()}, old)
    loaded = MultimodalGPT.load(old, config=model.config).eval()
    assert torch.equal(loaded(images, ids)[0], model(images, ids)[0])
    with pytest.raises(ValueError, match="differs in dim: checkpoint 32, expected 64"):
        MultimodalGPT.load(old, config=dataclasses.replace(model.config, dim=64))
    torch.save({"format": saved["format"], "version": 1, "config": config_dict(model.config),
                "model": model.state_dict()}, old)  # half old keys, half new: refused
    with pytest.raises(ValueError, match="do not fit its config"):
        MultimodalGPT.load(old)
