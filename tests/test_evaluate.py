"""Evaluation: teacher-forced exact match is what greedy generation answers, sample by sample."""
from __future__ import annotations

import torch

from mmgpt.data import ShapesDataset
from mmgpt.evaluate import exact_match
from mmgpt.model import MultimodalGPT, MultimodalGPTConfig, prompt_ids
from mmgpt.tokenizer import BPETokenizer


def test_exact_match_is_greedy_generation_even_where_image_is_the_top_logit():
    torch.manual_seed(0)
    tokenizer = BPETokenizer()  # bytes and the special tokens: all a random model needs
    model = MultimodalGPT(MultimodalGPTConfig.for_tokenizer(
        tokenizer, dim=32, num_layers=1, num_heads=2, context_length=64)).eval()
    # Make <image> every position's top logit. Greedy generation never writes it, so an
    # exact match that did not leave it out would count every answer wrong.
    bias = torch.zeros(model.config.vocab_size)
    bias[tokenizer.image_id] = 1e4
    model.decoder.head.register_forward_hook(lambda module, inputs, out: out + bias)

    data = ShapesDataset("test", 12, image_size=32)
    rows, masks, generation_right = [], [], []
    for i in range(len(data)):
        sample = data[i]
        prompt = prompt_ids(tokenizer, sample["question"])
        image = sample["image"][None]
        greedy = model.generate(image, torch.tensor([prompt]), 4, temperature=0)
        # Half the answers are what greedy decoding writes, half the data's own answers.
        answer = (greedy[0, len(prompt):].tolist() if i % 2 == 0
                  else tokenizer.encode(sample["answer"]) + [tokenizer.eos_id])
        written = model.generate(image, torch.tensor([prompt]), len(answer), temperature=0)
        generation_right.append(written[0, len(prompt):].tolist() == answer)
        rows.append(prompt + answer)
        masks.append([False] * len(prompt) + [True] * len(answer))

    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([m + [False] * (width - len(m)) for m in masks])
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    with torch.no_grad():
        logits, _ = model(images, ids)
    assert exact_match(logits, ids, mask, tokenizer.image_id).tolist() == generation_right
    assert any(generation_right) and not all(generation_right)
    assert not exact_match(logits, ids, mask).any()  # <image> left in: nothing matches
