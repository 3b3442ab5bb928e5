"""Multiple choice by likelihood (workers/core/evaluation/likelihood.py) on a tiny random Llama:
every score equals an independent computation with a plain `model(...)` forward written here,
for each normalisation; the prefix-shared batched path equals one forward per (question,
option); logits are computed only at answer positions; circular evaluation."""
from __future__ import annotations

import math

import pytest

from workers.core.evaluation.likelihood import (
    NORMALIZATIONS,
    MultipleChoice,
    circular_variants,
    combine_circular,
    encode_question,
    expand_circular,
    score_choices,
    score_one_prompt_per_option,
)
from workers.core.specs import SpecError

# Contexts of different lengths (so batches pad), options of one token (" the", " and", " to")
# and of several, two to four options a question. Contexts end without whitespace and options
# start with one, so the joint tokenization splits cleanly at the boundary (checked below).
QUESTIONS = [
    MultipleChoice("First Citizen:\nBefore we proceed any further, hear me speak.\nAnswer:", (" the", " and", " to", " of")),
    MultipleChoice("All:\nSpeak, speak.", (" You are all resolved rather to die than to famish?", " Resolved.", " the")),
    MultipleChoice("MENENIUS:\nWhy, masters, my good friends, mine honest neighbours, will you undo yourselves?",
                   (" We cannot, sir, we are undone already.", " and", " I tell you, friends, most charitable care")),
    MultipleChoice("Second Citizen:", (" Would you proceed especially against Caius Marcius?", " Against him first.")),
    MultipleChoice("Answer:", (" my", " I", " of", " to")),
    MultipleChoice("CORIOLANUS:\nThey are dissolved: hang 'em! They said they were an-hungry; sigh'd forth proverbs, "
                   "that hunger broke stone walls, that dogs must eat.", (" the king", " the", " a noble")),
]


def independent_logprob(model, tokenizer, context: str, option: str) -> tuple[float, int]:
    """log p(option | context) with one plain forward of the jointly tokenized text, in float64."""
    import torch

    context_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + option)["input_ids"]
    assert whole[: len(context_ids)] == context_ids, "the test's texts split cleanly at the boundary"
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    total = sum(float(logprobs[p - 1, whole[p]]) for p in range(len(context_ids), len(whole)))
    return total, len(whole) - len(context_ids)


def by_hand(logprob: float, tokens: int, option: str, normalization: str) -> float:
    return {"none": logprob, "per-token": logprob / tokens, "per-character": logprob / len(option)}[normalization]


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_each_option_scores_as_an_independent_forward_of_context_and_option(tiny_lm, normalization):
    model, tokenizer = tiny_lm
    results = score_choices(model, tokenizer, QUESTIONS, normalization=normalization)

    assert len(results) == len(QUESTIONS)
    for question, result in zip(QUESTIONS, results):
        expected = []
        for option, logprob, score in zip(question.options, result.logprobs, result.scores):
            reference, tokens = independent_logprob(model, tokenizer, question.context, option)
            expected.append(by_hand(reference, tokens, option, normalization))
            assert logprob == pytest.approx(reference, abs=1e-4)
            assert score == pytest.approx(expected[-1], abs=1e-4)
        assert result.prediction == max(range(len(expected)), key=expected.__getitem__)


def test_the_normalisations_can_pick_different_options(tiny_lm):
    model, tokenizer = tiny_lm
    picks = {n: [r.prediction for r in score_choices(model, tokenizer, QUESTIONS, normalization=n)] for n in NORMALIZATIONS}
    # long options lose on the raw sum and can win per token: the setting is not a no-op
    assert picks["none"] != picks["per-token"]
    raw = score_choices(model, tokenizer, QUESTIONS)
    assert [r.renormalized("per-token").prediction for r in raw] == picks["per-token"]


def test_the_prefix_shared_path_equals_one_prompt_per_option(tiny_lm):
    model, tokenizer = tiny_lm
    reference = score_one_prompt_per_option(model, tokenizer, QUESTIONS)
    # a small budget forces several batches, one question alone, and padding in each
    for budget, per_batch in ((2048, 64), (60, 3), (1, 1)):
        shared = score_choices(model, tokenizer, QUESTIONS, max_batch_tokens=budget, max_batch_questions=per_batch)
        for fast, slow in zip(shared, reference):
            assert fast.logprobs == pytest.approx(slow.logprobs, abs=1e-4)
            assert fast.prediction == slow.prediction


def test_logits_are_computed_only_at_answer_positions_and_each_context_runs_once(tiny_lm):
    model, tokenizer = tiny_lm
    head_rows, forwards = [], []
    hooks = [
        model.lm_head.register_forward_hook(lambda module, args, out: head_rows.append(out.reshape(-1, out.shape[-1]).shape[0])),
        model.model.embed_tokens.register_forward_hook(lambda module, args, out: forwards.append(tuple(out.shape[:2]))),
    ]
    try:
        score_choices(model, tokenizer, QUESTIONS)
    finally:
        for hook in hooks:
            hook.remove()
    encoded = [encode_question(tokenizer, q) for q in QUESTIONS]
    later_tokens = sum(len(ids) - 1 for q in encoded for ids in q.option_ids)
    # one batch: one forward of the contexts (one logit row each: every option's first token),
    # one forward of the options' remaining tokens (one logit row per remaining token)
    assert head_rows == [len(QUESTIONS), later_tokens]
    assert forwards[0] == (len(QUESTIONS), max(len(q.context_ids) for q in encoded))


def test_questions_with_only_one_token_options_need_no_second_forward(tiny_lm):
    model, tokenizer = tiny_lm
    one_token = [q for q in QUESTIONS if all(len(tokenizer(o)["input_ids"]) == 1 for o in q.options)]
    assert len(one_token) == 2
    calls = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    try:
        results = score_choices(model, tokenizer, one_token)
    finally:
        hook.remove()
    assert len(calls) == 1
    for fast, slow in zip(results, score_one_prompt_per_option(model, tokenizer, one_token)):
        assert fast.logprobs == pytest.approx(slow.logprobs, abs=1e-4)


def test_trailing_whitespace_of_the_context_moves_to_the_options(tiny_lm):
    model, tokenizer = tiny_lm
    spaced, plain = score_choices(model, tokenizer, [
        MultipleChoice("Second Citizen: ", ("Would you proceed?", "Against him first.")),
        MultipleChoice("Second Citizen:", (" Would you proceed?", " Against him first.")),
    ])
    assert spaced.logprobs == pytest.approx(plain.logprobs, abs=1e-6)
    assert spaced.chars == [len("Would you proceed?"), len("Against him first.")]  # the option as given


def test_a_merge_across_the_boundary_scores_the_option_encoded_on_its_own(tiny_lm):
    import torch

    model, tokenizer = tiny_lm
    question = MultipleChoice("the kin", ("g", "d"))
    encoded = encode_question(tokenizer, question)
    # jointly "the king" merges the context's last token with the option's: the context keeps
    # its own tokens and the option is appended as encoded alone
    assert tokenizer("the king")["input_ids"][:len(encoded.context_ids)] != list(encoded.context_ids)
    assert encoded.boundary_merge
    assert encoded.option_ids[0] == tuple(tokenizer("g")["input_ids"])
    ids = list(encoded.context_ids) + list(encoded.option_ids[0])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    expected = sum(float(logprobs[p - 1, ids[p]]) for p in range(len(encoded.context_ids), len(ids)))
    assert score_choices(model, tokenizer, [question])[0].logprobs[0] == pytest.approx(expected, abs=1e-4)


def test_a_context_too_long_for_the_model_loses_tokens_from_its_start(tiny_lm):
    model, tokenizer = tiny_lm
    long_context = "First Citizen: we are accounted poor citizens, the patricians good. " * 40 + "\nAnswer:"
    question = MultipleChoice(long_context, (" the", " Resolved, resolved."))
    encoded = encode_question(tokenizer, question, max_length=model.config.max_position_embeddings)
    assert encoded.truncated > 0
    assert len(encoded.context_ids) + max(map(len, encoded.option_ids)) == model.config.max_position_embeddings
    fast = score_choices(model, tokenizer, [question])[0]
    slow = score_one_prompt_per_option(model, tokenizer, [question])[0]
    assert fast.logprobs == pytest.approx(slow.logprobs, abs=1e-4)


def test_an_empty_context_is_conditioned_on_the_bos_token(tiny_lm):
    model, tokenizer = tiny_lm
    encoded = encode_question(tokenizer, MultipleChoice("", ("hello", "First")))
    assert encoded.context_ids == (tokenizer.bos_token_id,)
    fast = score_choices(model, tokenizer, [MultipleChoice("", ("hello", "First"))])[0]
    assert all(math.isfinite(v) for v in fast.logprobs)


@pytest.mark.parametrize("question, field", [
    (MultipleChoice("Answer:", ()), "questions[0].options"),
    (MultipleChoice("Answer:", (" A", "")), "questions[0].options[1]"),
    (MultipleChoice("Answer:", (" A", None)), "questions[0].options[1]"),
])
def test_a_bad_question_is_refused_naming_the_question_and_option(tiny_lm, question, field):
    model, tokenizer = tiny_lm
    with pytest.raises(SpecError) as error:
        score_choices(model, tokenizer, [question])
    assert error.value.field == field


def test_an_unknown_normalisation_is_refused_naming_the_setting(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(SpecError) as error:
        score_choices(model, tokenizer, QUESTIONS, normalization="per-byte")
    assert error.value.field == "normalization" and "per-character" in error.value.reason


# ------------------------------------------------------------------------------- circular evaluation


def test_circular_variants_are_every_rotation_with_the_answer_followed():
    variants = circular_variants(["w", "x", "y", "z"], answer=2)
    assert variants == [
        (["w", "x", "y", "z"], 2),
        (["x", "y", "z", "w"], 1),
        (["y", "z", "w", "x"], 0),
        (["z", "w", "x", "y"], 3),
    ]
    assert all(options[answer] == "y" for options, answer in variants)
    with pytest.raises(SpecError):
        circular_variants(["w", "x"], answer=2)


def test_a_circular_question_is_right_only_when_every_rotation_is_right():
    flat, groups = expand_circular([(["a", "b", "c"], 0), (["p", "q"], 1)])
    assert [len(g) for g in groups] == [3, 2] and len(flat) == 5
    # a model that always picks the first listed option: right on one rotation of each question
    always_first = [answer == 0 for _, answer in flat]
    assert combine_circular(always_first, groups) == [False, False]
    assert combine_circular([True] * 5, groups) == [True, True]
    assert combine_circular([True, True, True, True, False], groups) == [True, False]


def test_circular_evaluation_on_a_model_counts_a_question_only_if_all_rotations_are_right(tiny_lm):
    model, tokenizer = tiny_lm
    letters = " ABCD"

    def render(stem, options):
        listed = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", options))
        return MultipleChoice(f"{stem}{listed}\nAnswer:", tuple(f" {letter}" for letter in "ABCD"[: len(options)]))

    items = [(["hunger", "revenge", "corn", "bread"], 0), (["Marcius", "Menenius", "the gods", "Rome"], 2),
             (["speak", "proceed", "die", "famish"], 3)]
    flat, groups = expand_circular(items)
    results = score_choices(model, tokenizer, [render("What do the citizens want?", opts) for opts, _ in flat])
    correct = [r.prediction == answer for r, (_, answer) in zip(results, flat)]
    circular = combine_circular(correct, groups)
    assert circular == [all(correct[i] for i in g) for g in groups]
    plain = [correct[g[0]] for g in groups]  # rotation 0 is the question as written
    assert sum(circular) <= sum(plain)
    assert letters  # the options are letters, the rotations move the texts
