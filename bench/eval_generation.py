"""Generation part of bench/eval.py (run it from there: `bench/eval.py --part generation`).

GSM8K test questions (the first `--gsm8k` of ../shared/data/gsm8k/test.jsonl) as SmolLM2 chat
prompts: the question plus the suffix of tests/fixtures/data/eval_outputs (the prompt the
extraction tests' real SmolLM2 outputs came from), rendered with the model's chat template into
ONE prompt string that both sides tokenize the same way (`tokenizer(prompt)`, as the engine's
completion path does). Greedy, the same `max_new_tokens`, and the same end: the model's EOS
(<|im_end|>, generation_config.eos_token_id) or the token budget; no stop strings on either side
(the runner's EngineGenerator sends none).

A = workers.core.evaluation.runner.EngineGenerator (the continuous-batching engine around its own
    copy of the weights), `--gen-round` prompts submitted together per call (default: all).
B = `model.generate` one question at a time on another copy of the weights (what a plain
    evaluation loop does); `--no-baseline` skips B (to try engine settings).
Rounds alternate A/B (A first on even rounds), so a change in the shared machine's load weighs on
both. Tokens counted on both sides include the closing EOS token.
Printed: wall time and tokens/s of each, the ratio, the share of questions whose extracted answer
is the same and whose full text is the same, each side's accuracy (with its Wilson interval), and
for every question whose text differs: where the texts part and the logit gap between the two
best tokens there (an fp32 forward of the prompt + the common prefix): batched kernels sum in
another order, so a near-tie can flip and the rest of the text follows the other branch.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def gsm8k_rows(count: int) -> list[dict]:
    with open(GSM8K, encoding="utf-8") as fh:
        return [json.loads(line) for line, _ in zip(fh, range(count))]


def chat_prompts(tokenizer, rows: list[dict]) -> list[str]:
    from tests.fixtures.data.eval_outputs.make_smollm2_outputs import GSM8K_SUFFIX

    return [tokenizer.apply_chat_template([{"role": "user", "content": row["question"] + GSM8K_SUFFIX}],
                                          add_generation_prompt=True, tokenize=False) for row in rows]


def make_generator(model, tokenizer, args, max_new_tokens: int):
    """The runner's EngineGenerator; with any engine flag set, its engine is built here from an
    EngineConfig with those fields (the runner builds `EngineConfig()` itself)."""
    from workers.core.evaluation.runner import EngineGenerator
    from workers.core.inference.engine import Engine, EngineConfig

    generator = EngineGenerator(model, tokenizer)
    overrides = {name: value for name, value in (
        ("max_batch_tokens", args.engine_batch_tokens), ("max_concurrent", args.engine_concurrent),
        ("kv_cache_bytes", args.engine_kv_mib * 1024**2), ("block_size", args.engine_block_size)) if value}
    if overrides:
        # greedy requests never use the exclusive lane, so it is off (it would copy the weights)
        config = EngineConfig(exclusive_lane="off", max_new_tokens_cap=max(2048, max_new_tokens), **overrides)
        generator.engine = Engine.from_model(config, model, tokenizer)
        generator.engine.start()
    return generator, overrides


class StatsSampler:
    """Samples the engine's running / waiting requests and KV use while a round runs: how many
    requests really decode together (the KV budget or max_concurrent may cap it)."""

    def __init__(self, engine, every: float = 0.5) -> None:
        self.engine, self.every, self.samples = engine, every, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.samples.append(self.engine.stats())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> str:
        busy = [s for s in self.samples if s["running"] or s["waiting"]]
        if not busy:
            return "no samples"
        mean = sum(s["running"] for s in busy) / len(busy)
        return (f"running mean {mean:.1f} / max {max(s['running'] for s in busy)}, waiting max "
                f"{max(s['waiting'] for s in busy)}, KV used max {100 * max(s['kv_cache_used'] for s in busy):.0f} % "
                f"of {busy[0]['kv_capacity_tokens']} tokens")


def sequential(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    import torch

    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt)["input_ids"]  # as the engine's completion path encodes it
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=model.generation_config.pad_token_id)
            outputs.append(out[0, len(ids):].tolist())
    return outputs


def near_tie(model, tokenizer, prompt: str, tokens: list[int], engine_text: str) -> str:
    """Where B's tokens and A's text part, and the gap between the two best logits there."""
    import torch

    k = 0  # B's tokens whose text A's output shares
    while k < len(tokens) and engine_text.startswith(tokenizer.decode(tokens[: k + 1], skip_special_tokens=True)):
        k += 1
    if k == len(tokens):
        return f"A runs on after B's {k} tokens"
    ids = tokenizer(prompt)["input_ids"] + tokens[:k]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(logits, 2)
    b_tok, other = tokens[k], int(top.indices[1] if int(top.indices[0]) == tokens[k] else top.indices[0])
    before = tokenizer.decode(tokens[max(0, k - 6):k], skip_special_tokens=True)[-40:]
    a_next = engine_text[len(tokenizer.decode(tokens[:k], skip_special_tokens=True)):][:12]
    return (f"token {k}: after {before!r} B took {tokenizer.decode([b_tok])!r}, A {a_next!r}; top-2 logits "
            f"{top.values[0]:.4f} vs {top.values[1]:.4f} (gap {top.values[0] - top.values[1]:.2e}, "
            f"the other {tokenizer.decode([other])!r})")


def bench_generation(model, baseline, tokenizer, args, load_average) -> None:
    from workers.core.evaluation.extract import answers_match, extract
    from workers.core.evaluation.runner import reference_of
    from workers.core.evaluation.statistics import wilson_interval

    count = args.gsm8k or (8 if args.quick else 100)
    budget = args.max_new_tokens or (64 if args.quick else 256)
    rows = gsm8k_rows(count)
    prompts = chat_prompts(tokenizer, rows)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    print(f"\n== generation: {len(rows)} GSM8K test questions, chat prompts of {min(lengths)}-{max(lengths)} tokens "
          f"(mean {sum(lengths) / len(lengths):.0f}), greedy, max_new_tokens {budget}, extractor {args.extractor}")
    generator, overrides = make_generator(model, tokenizer, args, budget)
    try:
        warm = chat_prompts(tokenizer, gsm8k_rows(2))
        generator(warm, 8)  # starts the engine (the runner's config unless overridden) and warms kernels
        sequential(baseline, tokenizer, warm[:1], 8)
        engine = generator.engine
        shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
        print(f"engine: {f'EngineConfig({shown})' if overrides else 'the runner default EngineConfig()'}, "
              f"KV {engine.capacity_tokens} tokens, max_concurrent {engine.config.max_concurrent}, "
              f"max_batch_tokens {engine.config.max_batch_tokens or 'cpu default 512'}")
        size = args.gen_round or len(prompts)
        texts_a, tokens_b, a_s, b_s, a_tokens = [], [], 0.0, 0.0, 0
        for r, start in enumerate(range(0, len(prompts), size)):
            chunk = prompts[start:start + size]
            for which in ("AB" if r % 2 == 0 else "BA"):
                started = time.perf_counter()
                if which == "A":
                    before = engine.tokens_total
                    with StatsSampler(engine) as sampler:
                        texts_a += generator(chunk, budget)
                    a_s += time.perf_counter() - started
                    a_tokens += engine.tokens_total - before
                    batching = sampler.summary()
                elif not args.no_baseline:
                    tokens_b += sequential(baseline, tokenizer, chunk, budget)
                    b_s += time.perf_counter() - started
            b_tokens = sum(map(len, tokens_b))
            print(f"  {len(texts_a):4d} questions: A {a_s:7.1f} s {a_tokens:6d} tokens, B {b_s:7.1f} s "
                  f"{b_tokens:6d} tokens, load {load_average()}; engine {batching}", flush=True)
    finally:
        generator.close()

    print(f"A engine (EngineGenerator): {a_s:8.1f} s, {a_tokens} tokens, {a_tokens / a_s:6.1f} tokens/s")
    if args.no_baseline:
        return
    texts_b = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens_b]
    b_tokens = sum(map(len, tokens_b))
    at_limit = sum(len(t) >= budget for t in tokens_b)
    print(f"B sequential generate     : {b_s:8.1f} s, {b_tokens} tokens, {b_tokens / b_s:6.1f} tokens/s "
          f"({at_limit}/{len(rows)} answers hit the {budget}-token budget)")
    print(f"speed-up A/B              : {b_s / a_s:6.2f}x wall time, {(a_tokens / a_s) / (b_tokens / b_s):6.2f}x "
          f"tokens/s  (target >= 3x)")

    references = [reference_of("qa", row) for row in rows]
    got_a = [extract(args.extractor, t) for t in texts_a]
    got_b = [extract(args.extractor, t) for t in texts_b]
    same_answer = sum(a == b for a, b in zip(got_a, got_b))
    same_text = [a == b for a, b in zip(texts_a, texts_b)]
    n = len(rows)
    print(f"same extracted answer     : {same_answer}/{n} = {100 * same_answer / n:.1f} %  "
          "(no answer on both sides counts as the same)")
    print(f"same full text            : {sum(same_text)}/{n} = {100 * sum(same_text) / n:.1f} %")
    for name, got in (("A", got_a), ("B", got_b)):
        right = sum(answers_match(args.extractor, g, ref) for g, ref in zip(got, references))
        low, high = wilson_interval(right, n)
        print(f"accuracy {name}                : {right}/{n} = {100 * right / n:.1f} % "
              f"[{100 * low:.1f}, {100 * high:.1f}] (no answer: {sum(g is None for g in got)})")
    for i, same in enumerate(same_text):
        if not same:
            answers = "same answer" if got_a[i] == got_b[i] else f"answers A {got_a[i]} / B {got_b[i]}"
            print(f"  differs q{i} ({answers}): {near_tie(baseline, tokenizer, prompts[i], tokens_b[i], texts_a[i])}")
