"""The training path's loss (workers/core/training/loss.py): logits only for the positions that carry
loss, computed in chunks, equal to the plain `model(..., labels=...)` loss and gradients on a tiny
Llama with packed samples and masked prompt tokens; and gradient checkpointing on by default where
it pays (LoRA)."""
from __future__ import annotations

import contextlib

import pytest

from tests.core.training.conftest import spec_params
from workers.core.data.tokenize import IGNORE_INDEX
from workers.core.reporting import ConsoleReporter
from workers.core.specs import SpecError, build_spec
from workers.core.training.spec import TrainSpec

TOLERANCE = 1e-5


@contextlib.contextmanager
def built_recipe(tmp_path, tiny_base, alpaca_chat, **overrides):
    """(the LMRecipe set up with its Trainer, its reporter), cleaned up afterwards."""
    from workers.core.training.recipes import LMRecipe

    overrides = {"max_length": 512, "batch_size": 2, **overrides}  # packs of 2-3 Alpaca samples
    spec = build_spec(TrainSpec, spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)],
                                             **overrides))
    reporter = ConsoleReporter()
    recipe = LMRecipe(spec, reporter)
    try:
        recipe.setup()
        yield recipe, reporter
    finally:
        recipe.cleanup()


def first_batch(recipe) -> dict:
    batch = next(iter(recipe.trainer.get_train_dataloader()))
    batch.pop("real_tokens")
    return batch


def loss_and_grads(model, compute) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def assert_same_grads(ours: dict, plain: dict) -> None:
    assert ours.keys() == plain.keys() and ours
    worst = max((ours[name] - plain[name]).abs().max().item() for name in plain)
    assert worst <= TOLERANCE, worst
    assert any(g.abs().max().item() > 1e-4 for g in plain.values())  # the comparison is not between zeros


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_the_training_loss_and_its_gradients_equal_the_plain_path_on_packed_samples_with_masked_prompts(
        tmp_path, tiny_base, alpaca_chat, finetune):
    with built_recipe(tmp_path, tiny_base, alpaca_chat, finetune=finetune) as (recipe, _):
        trainer, model = recipe.trainer, recipe.trainer.model
        assert trainer.compute_loss_func is not None  # the chunked loss is the one training uses
        batch = first_batch(recipe)
        restarts = (batch["position_ids"][:, 1:] == 0).sum().item()
        masked = (batch["labels"] == IGNORE_INDEX).sum().item()
        assert restarts >= batch["input_ids"].shape[0] and masked > 0  # several samples a row, prompts masked
        if finetune == "lora":
            assert recipe.spec.gradient_checkpointing and trainer.args.gradient_checkpointing  # the LoRA default
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()

        plain_loss, plain_grads = loss_and_grads(model, lambda: model(**batch, use_cache=False).loss)
        loss, grads = loss_and_grads(model, lambda: trainer.compute_loss(model, dict(batch)))
        assert loss == pytest.approx(plain_loss, abs=TOLERANCE)
        assert_same_grads(grads, plain_grads)

        # Gradient accumulation: both normalise by the token count of the whole accumulated batch.
        items = (batch["labels"][:, 1:] != IGNORE_INDEX).sum() * 3
        plain_loss, plain_grads = loss_and_grads(
            model, lambda: model(**batch, use_cache=False, num_items_in_batch=items).loss)
        loss, grads = loss_and_grads(model, lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=items))
        assert loss == pytest.approx(plain_loss, abs=TOLERANCE)
        assert_same_grads(grads, plain_grads)


def test_the_lm_head_projects_no_position_while_training_and_every_position_otherwise(tmp_path, tiny_base,
                                                                                      alpaca_chat):
    import torch

    with built_recipe(tmp_path, tiny_base, alpaca_chat) as (recipe, _):
        trainer, model = recipe.trainer, recipe.trainer.model
        projected = []
        head = model.get_base_model().get_output_embeddings()
        head.register_forward_hook(lambda module, args, output: projected.append(output.shape[-2]))
        batch = first_batch(recipe)
        model.train()
        trainer.compute_loss(model, dict(batch)).backward()
        assert projected == [0]  # the loss took the hidden states; no [tokens x vocab] logits were made
        with torch.no_grad():
            model.eval()
            logits = model(input_ids=batch["input_ids"][:, :16], use_cache=False).logits  # e.g. sample generations
        assert projected[-1] == 16 and logits.shape[-2] == 16
        evaluated = trainer.prediction_step(model, dict(batch), prediction_loss_only=True)[0]
        with torch.no_grad():
            plain = model(**batch, use_cache=False).loss
        assert evaluated.item() == pytest.approx(plain.item(), abs=TOLERANCE)  # eval_loss takes the same path


def test_a_lora_on_the_lm_head_keeps_the_plain_loss_path_and_says_why(tmp_path, tiny_base, alpaca_chat):
    with built_recipe(tmp_path, tiny_base, alpaca_chat,
                      lora_targets=["q_proj", "v_proj", "lm_head"]) as (recipe, reporter):
        assert recipe.trainer.compute_loss_func is None
        assert any("plain path" in line and "not a plain Linear" in line for line in reporter.lines)


def test_a_batch_without_any_loss_token_gives_a_zero_loss_that_still_backpropagates(tmp_path, tiny_base,
                                                                                    alpaca_chat):
    import torch

    with built_recipe(tmp_path, tiny_base, alpaca_chat) as (recipe, _):
        trainer, model = recipe.trainer, recipe.trainer.model
        batch = first_batch(recipe)
        batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
        model.train()
        loss = trainer.compute_loss(model, dict(batch))
        assert loss.item() == 0.0
        loss.backward()  # the graph is intact (every rank of a DDP run must backpropagate)


def params(tmp_path, **overrides) -> dict:
    return spec_params(tmp_path, base_model_dir=str(tmp_path / "base"), train_files=[str(tmp_path / "d.jsonl")],
                       **overrides)


def test_gradient_checkpointing_is_on_by_default_for_lora_and_off_for_full_fine_tuning(tmp_path):
    tmp = tmp_path
    for overrides, expected in [({"finetune": "lora"}, True), ({"finetune": "qlora", "precision": "bf16"}, True),
                                ({"finetune": "full"}, False), ({"method": "pretrain", "base_model_dir": ""}, False),
                                ({"finetune": "lora", "gradient_checkpointing": False}, False),
                                ({"finetune": "full", "gradient_checkpointing": True}, True)]:
        spec = build_spec(TrainSpec, {**params(tmp), **overrides})
        assert spec.gradient_checkpointing is expected, overrides
    with pytest.raises(SpecError) as info:
        build_spec(TrainSpec, {**params(tmp), "gradient_checkpointing": "yes"})
    assert info.value.field == "gradient_checkpointing"
