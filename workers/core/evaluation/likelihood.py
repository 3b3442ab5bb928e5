"""Multiple choice by likelihood: the log-likelihood of each option's continuation after the
question's context, with no / per-token / per-character normalisation.

    questions = [MultipleChoice(context="...\\nAnswer:", options=(" A", " B", " C", " D"))]
    scores = score_choices(model, tokenizer, questions, normalization="none")
    scores[0].prediction, scores[0].logprobs, scores[0].scores

The fast path (`score_choices`) encodes each question's context ONCE and scores all its options
from that prefix: OpenCompass's PPL mode instead recomputes the whole prompt per option.
  1. Questions are sorted by length (longest first, so a batch that does not fit fails at once)
     and batched under a token budget. One forward runs the batch's contexts (right-padded), keeps
     the KV cache, and computes logits only at each context's last position: they give every
     option's FIRST token log-probability (for a one-token option such as " A", that is all).
  2. Options of two or more tokens: the cache rows are copied per option
     (`DynamicCache.batch_select_indices`), and one forward runs every option's tokens but its
     last after its question's cached context (position ids continue the context's), with
     logits only at those positions (`logits_to_keep` as a boolean mask): they give the
     remaining tokens' log-probabilities. No logits are computed anywhere else.
`score_one_prompt_per_option` is the reference: one full forward of context + option per
(question, option), full logits, as OpenCompass does. Both paths score the same token ids
(`encode_question`), so they agree to float rounding (tests, bench/eval.py).

Tokenization boundary rule (as lm-eval-harness): trailing whitespace of the context moves to the
front of every option ("Answer: " + "A" is scored as "Answer:" + " A", the space belongs to the
following word in BPE vocabularies). The context is encoded alone (with the tokenizer's special
tokens, e.g. BOS); each option's tokens are the tail of the JOINT encoding of context + option
after the context's tokens, so an option is tokenized exactly as it would be in running text.
When the joint encoding does not start with the context's tokens (a merge across the boundary,
e.g. a context ending mid-word), the option is encoded on its own and appended; such questions
are counted in `EncodedQuestion.boundary_merge`. An empty context becomes the tokenizer's BOS
(or EOS) token, so the first option token is still conditioned on something. A context too long
for the model loses tokens from its start (never the options).

Normalisations (`NORMALIZATIONS`): "none" = the sum of the option tokens' log-probabilities
(nats); "per-token" = that sum / the option's token count; "per-character" = that sum / the
number of characters of the option string as given (lm-eval's acc_norm).

Circular evaluation (`circular_variants`, `combine_circular`): a question counts as right only if
the model is right for every rotation of its options (OpenCompass's CircularEval).

Limits: models whose KV cache is not a plain concatenating cache (sliding-window layers shorter
than context + option, recurrent or linear-attention layers) are not supported by the fast path;
use the reference path for them. Torch and transformers are imported inside the functions:
importing this module costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from workers.core.specs import SpecError, short

NORMALIZATIONS = ("none", "per-token", "per-character")
DEFAULT_BATCH_TOKENS = 1024  # padded context + option tokens per batch (bounds logits and KV copies)
# On 2 CPU cores the batch size barely matters (SmolLM2, 64 MMLU prompts: 13-15 s for 1 to 16
# questions a batch); on a GPU pass larger budgets.
DEFAULT_BATCH_QUESTIONS = 16


@dataclass(frozen=True)
class MultipleChoice:
    context: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class EncodedQuestion:
    context_ids: tuple[int, ...]
    option_ids: tuple[tuple[int, ...], ...]
    option_chars: tuple[int, ...]
    boundary_merge: bool = False  # some option was encoded apart from the context (see the module doc)
    truncated: int = 0  # context tokens dropped from the start to fit the model


@dataclass
class ChoiceScores:
    logprobs: list[float]  # per option: sum of its tokens' log-probabilities given the context (nats)
    tokens: list[int]  # per option: token count
    chars: list[int]  # per option: characters of the option string
    normalization: str = "none"
    scores: list[float] = field(init=False)  # logprobs normalised as chosen
    prediction: int = field(init=False)  # index of the best option (the first one on a tie)

    def __post_init__(self) -> None:
        self.scores = [normalize(lp, n, c, self.normalization) for lp, n, c in zip(self.logprobs, self.tokens, self.chars)]
        self.prediction = max(range(len(self.scores)), key=self.scores.__getitem__)

    def renormalized(self, normalization: str) -> ChoiceScores:
        """The same log-likelihoods under another normalisation (no model call)."""
        check_normalization(normalization)
        return ChoiceScores(self.logprobs, self.tokens, self.chars, normalization)


def check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise SpecError("normalization", f"must be one of {', '.join(NORMALIZATIONS)}, got {short(normalization)}")


def normalize(logprob: float, tokens: int, chars: int, normalization: str) -> float:
    if normalization == "per-token":
        return logprob / tokens
    if normalization == "per-character":
        return logprob / max(chars, 1)
    return logprob


# ---------------------------------------------------------------------------------------- encoding


def encode_question(tokenizer, question: MultipleChoice, *, max_length: int | None = None,
                    add_special_tokens: bool = True) -> EncodedQuestion:
    """Token ids of a question's context and of each option (the boundary rule: module doc)."""
    return encode_questions(tokenizer, [question], max_length=max_length, add_special_tokens=add_special_tokens)[0]


def encode_questions(tokenizer, questions: Sequence[MultipleChoice], *, max_length: int | None = None,
                     add_special_tokens: bool = True) -> list[EncodedQuestion]:
    """`encode_question` for many questions, with one batched tokenizer call for all contexts
    and one for all context + option texts (a fast tokenizer encodes a batch in parallel)."""
    for index, question in enumerate(questions):
        _check_question(question, f"questions[{index}]")
    stripped = [q.context.rstrip() for q in questions]
    moved = [q.context[len(s):] for q, s in zip(questions, stripped)]  # belongs to the option's first word
    contexts = _encode(tokenizer, stripped, add_special_tokens)
    joint = iter(_encode(tokenizer, [s + m + o for q, s, m in zip(questions, stripped, moved) for o in q.options],
                         add_special_tokens))
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for index, question in enumerate(questions):
        where, context_ids = f"questions[{index}]", contexts[index]
        option_ids, merged = [], False
        for k, option in enumerate(question.options):
            whole = next(joint)
            if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
                tail = whole[len(context_ids):]
            else:  # a merge across the boundary: the option as encoded on its own
                tail, merged = _encode(tokenizer, [moved[index] + option], False)[0], True
            if not tail:
                raise SpecError(f"{where}.options[{k}]", "encodes to no tokens")
            option_ids.append(tuple(tail))
        if not context_ids:
            if prefix is None:
                raise SpecError(f"{where}.context", "is empty and the tokenizer has no BOS or EOS token to stand for it")
            context_ids = [prefix]
        truncated = 0
        if max_length is not None:
            longest = max(len(ids) for ids in option_ids)
            if longest >= max_length:
                raise SpecError(f"{where}.options", f"an option of {longest} tokens leaves no room for the context "
                                                    f"in the model's {max_length} positions")
            truncated = max(0, len(context_ids) + longest - max_length)
            context_ids = context_ids[truncated:]
        encoded.append(EncodedQuestion(tuple(context_ids), tuple(option_ids),
                                       tuple(len(o) for o in question.options), merged, truncated))
    return encoded


def _check_question(question, where: str) -> None:
    if not isinstance(getattr(question, "context", None), str):
        raise SpecError(f"{where}.context", f"must be a string, got {short(getattr(question, 'context', question))}")
    options = getattr(question, "options", None)
    if not isinstance(options, (tuple, list)) or not options:
        raise SpecError(f"{where}.options", f"must be a non-empty list of options, got {short(options)}")
    for index, option in enumerate(options):
        if not isinstance(option, str) or not option:
            raise SpecError(f"{where}.options[{index}]", f"must be a non-empty string, got {short(option)}")


def _encode(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]] if texts else []


def model_max_length(model) -> int | None:
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


# -------------------------------------------------------------------------------- the fast path


def score_choices(model, tokenizer, questions: Sequence[MultipleChoice], *, normalization: str = "none",
                  max_batch_tokens: int = DEFAULT_BATCH_TOKENS, max_batch_questions: int = DEFAULT_BATCH_QUESTIONS,
                  add_special_tokens: bool = True, progress=None) -> list[ChoiceScores]:
    """Score every option of every question (prefix-shared, batched, length-sorted; module doc).
    `progress(done, total)` is called after each batch. Results are in the questions' order."""
    check_normalization(normalization)
    if max_batch_tokens < 1 or max_batch_questions < 1:
        raise SpecError("max_batch_tokens", "max_batch_tokens and max_batch_questions must be >= 1")
    encoded = encode_questions(tokenizer, questions, max_length=model_max_length(model),
                               add_special_tokens=add_special_tokens)
    return score_encoded(model, encoded, normalization=normalization, pad_id=_pad_id(tokenizer),
                         max_batch_tokens=max_batch_tokens, max_batch_questions=max_batch_questions, progress=progress)


def score_encoded(model, encoded: Sequence[EncodedQuestion], *, normalization: str = "none", pad_id: int = 0,
                  max_batch_tokens: int = DEFAULT_BATCH_TOKENS, max_batch_questions: int = DEFAULT_BATCH_QUESTIONS,
                  progress=None) -> list[ChoiceScores]:
    import torch

    check_normalization(normalization)
    logprobs: list[list[float] | None] = [None] * len(encoded)
    done = 0
    with torch.inference_mode():
        for batch in _batches(encoded, max_batch_tokens, max_batch_questions):
            for index, values in zip(batch, _score_batch(model, [encoded[i] for i in batch], pad_id)):
                logprobs[index] = values
            done += len(batch)
            if progress is not None:
                progress(done, len(encoded))
    return [
        ChoiceScores(values, [len(ids) for ids in question.option_ids], list(question.option_chars), normalization)
        for values, question in zip(logprobs, encoded)
    ]


def _batch_cost(questions: Sequence[EncodedQuestion]) -> int:
    """Padded tokens a batch runs: contexts, plus (options after their first token) x options."""
    context = len(questions) * max(len(q.context_ids) for q in questions)
    rest = [len(ids) - 1 for q in questions for ids in q.option_ids if len(ids) > 1]
    return context + (len(rest) * max(rest) if rest else 0)


def _batches(encoded: Sequence[EncodedQuestion], max_tokens: int, max_questions: int) -> list[list[int]]:
    """Question indices in batches, longest first; each batch within the budget (a question that
    alone exceeds it runs alone)."""
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i].context_ids), -max(map(len, encoded[i].option_ids))))
    batches, current = [], []
    for index in order:
        candidate = current + [index]
        if current and (len(candidate) > max_questions or _batch_cost([encoded[i] for i in candidate]) > max_tokens):
            batches.append(current)
            candidate = [index]
        current = candidate
    if current:
        batches.append(current)
    return batches


def _score_batch(model, questions: Sequence[EncodedQuestion], pad_id: int) -> list[list[float]]:
    import torch

    device = _device(model)
    lengths = [len(q.context_ids) for q in questions]
    width = max(lengths)
    ids = torch.full((len(questions), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(questions), width), dtype=torch.long)
    for row, question in enumerate(questions):
        ids[row, : lengths[row]] = torch.tensor(question.context_ids)
        mask[row, : lengths[row]] = 1
    last = torch.zeros((len(questions), width), dtype=torch.bool)
    last[torch.arange(len(questions)), torch.tensor(lengths) - 1] = True
    # Right padding: every padded query still sees the real tokens before it (no fully masked
    # attention row, so no NaN in the cache), and each row's positions are 0..n-1 as when alone.
    long_options = [(row, k) for row, q in enumerate(questions) for k, o in enumerate(q.option_ids) if len(o) > 1]
    mask = mask.to(device)
    out = model(input_ids=ids.to(device), attention_mask=mask, use_cache=bool(long_options),
                logits_to_keep=last.to(device))
    first = _token_logprobs(out.logits.reshape(len(questions), -1), None)  # (questions, vocab) log-softmax
    result = [[float(first[row, o[0]]) for o in q.option_ids] for row, q in enumerate(questions)]
    if not long_options:
        return result

    # Every option but its last token, after its question's cached context.
    cache = _cache_of(out)
    rows = torch.tensor([row for row, _ in long_options])
    cache.batch_select_indices(rows.to(device))
    span = max(len(questions[row].option_ids[k]) - 1 for row, k in long_options)
    option_ids = torch.full((len(long_options), span), pad_id, dtype=torch.long)
    option_mask = torch.zeros((len(long_options), span), dtype=torch.long)
    targets = []
    for r, (row, k) in enumerate(long_options):
        tokens = questions[row].option_ids[k]
        option_ids[r, : len(tokens) - 1] = torch.tensor(tokens[:-1])
        option_mask[r, : len(tokens) - 1] = 1
        targets.extend(tokens[1:])
    positions = torch.tensor(lengths)[rows].unsqueeze(1) + torch.arange(span).unsqueeze(0)
    out = model(
        input_ids=option_ids.to(device),
        attention_mask=torch.cat([mask[rows.to(device)], option_mask.to(device)], dim=1),
        position_ids=positions.to(device),
        cache=cache,
        use_cache=True,
        logits_to_keep=option_mask.bool().to(device),
    )
    # Boolean logits_to_keep flattens the kept positions row by row, the order of `targets`.
    picked = _token_logprobs(out.logits.reshape(len(targets), -1), targets).tolist()
    start = 0
    for row, k in long_options:
        count = len(questions[row].option_ids[k]) - 1
        result[row][k] += sum(picked[start: start + count])
        start += count
    return result


def _token_logprobs(logits, targets):
    """log p(target) per row of `logits` (rows, vocab), in float32 without a second full
    (rows, vocab) tensor when targets are given; all log-probabilities when targets is None."""
    import torch

    logits = logits.float()
    if targets is None:
        return torch.log_softmax(logits, dim=-1).cpu()
    index = torch.tensor(targets, device=logits.device).unsqueeze(1)
    return (logits.gather(1, index).squeeze(1) - torch.logsumexp(logits, dim=-1)).cpu()


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _device(model):
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if value is not None:
            return int(value)
    return 0  # padded positions are masked out and never scored: any id does


# ---------------------------------------------------------------------------- the reference path


def score_one_prompt_per_option(model, tokenizer, questions: Sequence[MultipleChoice], *,
                                normalization: str = "none", add_special_tokens: bool = True) -> list[ChoiceScores]:
    """The reference (OpenCompass's PPL mode): one full forward of context + option per
    (question, option), logits at every position. Same token ids as `score_choices`."""
    import torch

    check_normalization(normalization)
    encoded = encode_questions(tokenizer, questions, max_length=model_max_length(model),
                               add_special_tokens=add_special_tokens)
    device = _device(model)
    results = []
    with torch.inference_mode():
        for question in encoded:
            values = []
            for option in question.option_ids:
                ids = list(question.context_ids) + list(option)
                logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                start = len(question.context_ids)
                values.append(float(sum(logprobs[p - 1, ids[p]] for p in range(start, len(ids)))))
            results.append(ChoiceScores(values, [len(o) for o in question.option_ids], list(question.option_chars),
                                        normalization))
    return results


# ----------------------------------------------------------------------------- circular evaluation


def circular_variants(options: Sequence, answer: int) -> list[tuple[list, int]]:
    """Every rotation of `options` with the answer's index in it: rotation k starts at option k.
    The caller renders each into a question (the prompt usually lists the options)."""
    options = list(options)
    if not options:
        raise SpecError("options", "has no options")
    if not 0 <= answer < len(options):
        raise SpecError("answer", f"must be an option index 0..{len(options) - 1}, got {short(answer)}")
    return [(options[k:] + options[:k], (answer - k) % len(options)) for k in range(len(options))]


def expand_circular(items: Sequence[tuple[Sequence, int]]) -> tuple[list[tuple[list, int]], list[range]]:
    """(options, answer) items -> all their rotations in one flat list, and for each item the
    range of its rotations in that list (for `combine_circular`)."""
    flat, groups = [], []
    for options, answer in items:
        variants = circular_variants(options, answer)
        groups.append(range(len(flat), len(flat) + len(variants)))
        flat.extend(variants)
    return flat, groups


def combine_circular(correct: Sequence[bool], groups: Sequence[range]) -> list[bool]:
    """Per item: right only if every one of its rotations is right."""
    return [all(correct[i] for i in group) for group in groups]
