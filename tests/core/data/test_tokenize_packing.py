"""Packing rendered samples into fixed-length sequences without changing what is learned."""
from __future__ import annotations

import random

import pytest

from tests.fixtures.tiny_models import build_tiny_llama, train_tokenizer
from workers.core.data.generators import arithmetic_word_problems, tool_use_dialogues
from workers.core.data.packing import pack, plan_packs
from workers.core.data.tokenize import IGNORE_INDEX, render_record


def random_samples(count: int, max_len: int, seed: int = 0):
    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        n = rng.randint(1, max_len)
        ids = [rng.randrange(5, 500) for _ in range(n)]
        labels = [t if rng.random() < 0.6 else IGNORE_INDEX for t in ids]
        samples.append((ids, labels))
    return samples


def unpack(packs):
    """The samples of each pack, cut at seq_lens."""
    out = []
    for p in packs:
        start = 0
        for n in p["seq_lens"]:
            out.append((tuple(p["input_ids"][start:start + n]), tuple(p["labels"][start:start + n])))
            start += n
    return out


def test_position_ids_restart_for_every_sample_and_no_pack_exceeds_seq_len():
    samples = random_samples(300, 90)
    stats = {}
    packs = pack(samples, 128, pad_id=3, stats=stats)

    for p in packs:
        assert len(p["input_ids"]) == len(p["labels"]) == len(p["position_ids"]) == 128
        assert sum(p["seq_lens"]) <= 128
        start = 0
        for n in p["seq_lens"]:
            assert p["position_ids"][start:start + n] == list(range(n))
            assert p["labels"][start] == IGNORE_INDEX  # never predict across a sample boundary
            start += n
        gap = 128 - start
        assert p["input_ids"][start:] == [3] * gap and p["labels"][start:] == [IGNORE_INDEX] * gap
        assert p["position_ids"][start:] == list(range(gap))
    assert stats["samples"] == 300 and stats["packs"] == len(packs) and stats["truncated"] == 0


def test_packing_preserves_every_token_of_every_sample_exactly_once():
    samples = random_samples(300, 90)
    packs = pack(samples, 128)

    total = sum(len(ids) for ids, _ in samples)
    assert sum(sum(p["seq_lens"]) for p in packs) == total
    expected = sorted((tuple(ids), (IGNORE_INDEX, *labels[1:])) for ids, labels in samples)
    assert sorted(unpack(packs)) == expected


def test_best_fit_decreasing_fills_packs_almost_completely():
    stats = {}
    pack(random_samples(2000, 60, seed=1), 512, stats=stats)

    assert stats["fill"] > 0.99, stats


def test_samples_longer_than_seq_len_are_truncated_and_counted():
    stats = {}
    packs = pack([([7] * 300, [7] * 300), ([8] * 10, [8] * 10), ([], [])], 128, stats=stats)

    assert stats["truncated"] == 1 and stats["samples"] == 2
    assert sorted(n for p in packs for n in p["seq_lens"]) == [10, 128]


def test_the_pack_plan_is_deterministic_and_keeps_original_order_within_a_pack():
    lengths = [random.Random(5).randint(1, 50) for _ in range(200)]
    plan = plan_packs(lengths, 64)

    assert plan == plan_packs(lengths, 64)
    assert sorted(i for members in plan for i in members) == list(range(200))
    assert all(members == sorted(members) for members in plan)
    assert all(sum(lengths[i] for i in members) <= 64 for members in plan)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer_dir = train_tokenizer(tmp_path_factory.mktemp("tok"))
    model_dir = build_tiny_llama(tmp_path_factory.mktemp("llama"), tokenizer_dir=tokenizer_dir)
    return model_dir, AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_the_packed_loss_equals_the_per_sample_loss_on_a_tiny_llama(tiny_llama, attn_implementation):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir, tokenizer = tiny_llama
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn_implementation).eval()
    records = [(r, "qa") for r in arithmetic_word_problems(4, seed=2)]
    records += [(r, "chat") for r in tool_use_dialogues(3, seed=2)]
    records += [({"text": "Now is the winter of our discontent made glorious summer."}, "text")]
    samples = [render_record(r, fmt, tokenizer, max_length=120) for r, fmt in records]
    packs = pack(samples, 256, pad_id=tokenizer.pad_token_id)
    assert len(packs) < len(samples)  # several samples really share a pack

    def loss_sum(input_ids, labels, **kwargs):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([input_ids]), **kwargs).logits[0]
        targets = torch.tensor(labels[1:])
        return torch.nn.functional.cross_entropy(logits[:-1].double(), targets, ignore_index=IGNORE_INDEX,
                                                 reduction="sum"), int((targets != IGNORE_INDEX).sum())

    separate = [loss_sum(s.input_ids, s.labels) for s in samples]
    # transformers builds the block-diagonal mask from restarting position_ids only without an
    # attention_mask AND without a cache: use_cache=False is required (with the default True the
    # model creates a DynamicCache and silently attends across samples).
    packed = [loss_sum(p["input_ids"], p["labels"], position_ids=torch.tensor([p["position_ids"]]), use_cache=False)
              for p in packs]
    leaky = [loss_sum(p["input_ids"], p["labels"], use_cache=False) for p in packs]  # one causal mask over all
    with_cache = [loss_sum(p["input_ids"], p["labels"], position_ids=torch.tensor([p["position_ids"]])) for p in packs]

    n_separate, n_packed = sum(n for _, n in separate), sum(n for _, n in packed)
    mean_separate = sum(float(v) for v, _ in separate) / n_separate
    mean_packed = sum(float(v) for v, _ in packed) / n_packed
    mean_leaky = sum(float(v) for v, _ in leaky) / n_packed
    mean_with_cache = sum(float(v) for v, _ in with_cache) / n_packed
    print(f"\n{attn_implementation}: per-sample {mean_separate:.6f}, packed {mean_packed:.6f} "
          f"(|diff| {abs(mean_packed - mean_separate):.2e}); packed without position_ids {mean_leaky:.6f}; "
          f"packed with position_ids but use_cache left on {mean_with_cache:.6f} "
          f"({len(samples)} samples in {len(packs)} packs)")
    assert n_packed == n_separate
    assert abs(mean_packed - mean_separate) < 1e-4

    # and token by token: the logits of each sample inside a pack are its logits alone
    def logits_of(input_ids, **kwargs):
        with torch.no_grad():
            return model(input_ids=torch.tensor([input_ids]), use_cache=False, **kwargs).logits[0]

    by_ids = {tuple(s.input_ids): logits_of(s.input_ids) for s in samples}
    worst = worst_leaky = 0.0
    for p in packs:
        packed_logits = logits_of(p["input_ids"], position_ids=torch.tensor([p["position_ids"]]))
        leaky_logits = logits_of(p["input_ids"])
        start = 0
        for n in p["seq_lens"]:
            alone = by_ids[tuple(p["input_ids"][start:start + n])]
            worst = max(worst, float((packed_logits[start:start + n] - alone).abs().max()))
            worst_leaky = max(worst_leaky, float((leaky_logits[start:start + n] - alone).abs().max()))
            start += n
    print(f"max |logit difference| packed {worst:.2e}, without position_ids {worst_leaky:.2e}")
    assert worst < 1e-4 and worst_leaky > 1e-2
    # a random tiny model attends almost uniformly, so a leak moves the loss by only ~3e-4: still 10^5x
    # the packed error, so the check would notice attention across samples
    assert abs(mean_leaky - mean_separate) > 1e-5
