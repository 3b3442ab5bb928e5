"""Padding-free packing is exact: the loss of a packed batch equals the per-sample loss, and the two
silent traps of packed forwards (the KV cache left on, an all-ones attention_mask passed with
position_ids) are shown to break it, and are avoided by the training path."""
from __future__ import annotations

import pytest

from tests.core.training.conftest import spec_params
from workers.core.data.tokenize import IGNORE_INDEX
from workers.core.specs import build_spec
from workers.core.training.data import collate_packed, render_samples
from workers.core.training.spec import TrainSpec


@pytest.fixture(scope="module")
def model_and_samples(tiny_base, alpaca_chat):
    from workers.core.modelstore import load_causal_lm
    from workers.core.training.data import read_records

    model, tokenizer = load_causal_lm(tiny_base, dtype="float32")
    samples = render_samples(read_records([str(alpaca_chat)])[:12], "chat", tokenizer, 96, None)
    return model, tokenizer, samples


def per_sample_loss(model, samples) -> float:
    """Token-mean loss over all samples, each run alone (no padding, no packing)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in samples:
            labels = [IGNORE_INDEX] + labels[1:]
            out = model(input_ids=torch.tensor([ids]), use_cache=False)
            logits = out.logits[0, :-1]
            target = torch.tensor(labels[1:])
            total += torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX,
                                                       reduction="sum").item()
            count += int((target != IGNORE_INDEX).sum())
    return total / count


def packed_batch(samples, pad_id):
    from workers.core.training.data import PackedDataset

    dataset = PackedDataset(samples, 512, pad_id)
    assert len(dataset) < len(samples)  # several samples share a row
    return collate_packed([dataset[i] for i in range(len(dataset))])


def test_packed_attention_computes_the_same_loss_and_gradients_as_the_block_diagonal_mask(model_and_samples):
    """packed_attention.py runs each sample's slice of a row alone instead of masking the row's
    full scores: same numbers, and per-sample exact like the masked path."""
    import copy

    import torch

    from workers.core.training import packed_attention

    model, tokenizer, samples = model_and_samples
    batch = packed_batch(samples, tokenizer.pad_token_id)
    batch.pop("real_tokens")
    masked, sliced = copy.deepcopy(model), copy.deepcopy(model)
    assert packed_attention.use(sliced) and sliced.config._attn_implementation == packed_attention.ATTENTION
    losses, grads = [], []
    for each in (masked, sliced):
        each.zero_grad()
        loss = each(**batch, use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in each.parameters() if p.grad is not None]))
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert losses[1] == pytest.approx(per_sample_loss(model, samples), abs=1e-4)
    assert torch.allclose(grads[1], grads[0], atol=1e-5)
    # Anything but a packed row (here: one sample, then generation with a cache) takes sdpa unchanged.
    ids = torch.tensor([samples[0][0]])
    with torch.no_grad():
        assert torch.allclose(sliced(input_ids=ids).logits, masked(input_ids=ids).logits, atol=1e-5)
        assert sliced.generate(ids, max_new_tokens=4, do_sample=False).tolist() == \
            masked.generate(ids, max_new_tokens=4, do_sample=False).tolist()


def test_packed_loss_equals_per_sample_loss(model_and_samples):
    import torch

    model, tokenizer, samples = model_and_samples
    batch = packed_batch(samples, tokenizer.pad_token_id)
    assert "attention_mask" not in batch
    batch.pop("real_tokens")
    with torch.no_grad():
        packed = model(**batch, use_cache=False).loss.item()
    assert packed == pytest.approx(per_sample_loss(model, samples), abs=1e-4)


def test_the_kv_cache_trap_breaks_packing(model_and_samples):
    import torch

    model, tokenizer, samples = model_and_samples
    batch = packed_batch(samples, tokenizer.pad_token_id)
    batch.pop("real_tokens")
    with torch.no_grad():
        cached = model(**batch, use_cache=True).loss.item()
    assert abs(cached - per_sample_loss(model, samples)) > 1e-3


def test_the_all_ones_attention_mask_trap_breaks_packing(model_and_samples):
    import torch

    model, tokenizer, samples = model_and_samples
    batch = packed_batch(samples, tokenizer.pad_token_id)
    batch.pop("real_tokens")
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    with torch.no_grad():
        masked = model(**batch, use_cache=False).loss.item()
    assert abs(masked - per_sample_loss(model, samples)) > 1e-3


def test_the_training_path_avoids_both_traps(tmp_path, tiny_base, alpaca_chat):
    from workers.core.reporting import ConsoleReporter
    from workers.core.training.recipes import LMRecipe

    spec = build_spec(TrainSpec, spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)]))
    recipe = LMRecipe(spec, ConsoleReporter())
    try:
        recipe.setup()
        assert recipe.model.config.use_cache is False
        assert recipe.model.get_base_model().config.use_cache is False
        batch = next(iter(recipe.trainer.get_train_dataloader()))
        assert "attention_mask" not in batch and "position_ids" in batch
    finally:
        recipe.cleanup()


def test_without_packing_batches_are_padded_and_grouped_by_length(tmp_path, tiny_base, alpaca_chat):
    from workers.core.reporting import ConsoleReporter
    from workers.core.training.recipes import LMRecipe

    spec = build_spec(TrainSpec, spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)],
                                             packing=False))
    recipe = LMRecipe(spec, ConsoleReporter())
    try:
        recipe.setup()
        assert recipe.trainer.args.train_sampling_strategy == "group_by_length"
        batch = next(iter(recipe.trainer.get_train_dataloader()))
        lengths = batch["attention_mask"].sum(dim=1)
        assert int(batch["real_tokens"]) == int(lengths.sum())
        assert int(lengths.max()) - int(lengths.min()) < 0.5 * int(lengths.max())  # similar lengths together
    finally:
        recipe.cleanup()
