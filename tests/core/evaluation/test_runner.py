"""The evaluation runner on a tiny random Llama and small hand-made benchmark files: per-sample
decisions, the prediction cache (resume, re-score), the version hash, spec errors, the command line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.core.evaluation.helpers import CountingModel, model_spec, quiet, samples_of, write_rows
from workers.core.evaluation.runner import run_evaluation, score_sample
from workers.core.evaluation.spec import EvaluateSpec, benchmark_hash
from workers.core.reporting import ConsoleReporter, JobCancelled
from workers.core.specs import SpecError, build_spec

MC_ROWS = [
    {"question": "Which word names a king?", "choices": ["crown", "river", "stone", "bread"], "answer": "A"},
    {"question": "What does a ship sail on?", "choices": ["sand", "sea", "sky", "salt"], "answer": "B"},
    {"question": "Who speaks in a play?", "choices": ["lords", "walls", "doors", "stars"], "answer": "A"},
    {"question": "What is cold?", "choices": ["fire", "sun", "ice", "heat"], "answer": "C"},
    {"question": "Which is a number?", "choices": ["two", "tree", "true", "tower"], "answer": "A"},
    {"question": "What grows in a field?", "choices": ["iron", "corn", "glass", "coal"], "answer": "B"},
    {"question": "Which one flies?", "choices": ["fish", "stone", "bird", "wall"], "answer": "C"},
]
QA_ROWS = [
    {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"},
    {"question": "How many legs has a horse?", "answer": "#### 4"},
    {"question": "What is 10 - 7?", "answer": "3"},
]
CODE_ROWS = [
    {"task_id": "t/0", "prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "entry_point": "add",
     "tests": "def check(f):\n    assert f(1, 2) == 3\n", "canonical_solution": "    return a + b\n"},
    {"task_id": "t/1", "prompt": "def neg(x):\n    \"\"\"Return -x.\"\"\"\n", "entry_point": "neg",
     "tests": "def check(f):\n    assert f(4) == -4\n", "canonical_solution": "    return -x\n"},
]


def _mc(tmp_path, **scorer):
    return {"name": "mc", "shape": "multiple_choice", "data_path": write_rows(tmp_path / "mc.jsonl", MC_ROWS),
            "fewshot": [MC_ROWS[0]], "scorer": {"paradigm": "likelihood", **scorer}, "dimension": "knowledge"}


class StopAfter(ConsoleReporter):
    """Asks to stop once `samples` samples have been reported done."""

    def __init__(self, samples):
        super().__init__(stream=open("/dev/null", "w"))  # noqa: SIM115 - closed with the test process
        self.samples = samples

    def should_stop(self):
        return bool(self.metrics) and self.metrics[-1][1] >= self.samples


def test_multiple_choice_decisions_equal_an_independent_argmax_per_option(tiny, tmp_path):
    from workers.core.evaluation.likelihood import MultipleChoice, score_one_prompt_per_option

    _, model, tokenizer = tiny
    spec = model_spec(tiny, tmp_path, [_mc(tmp_path, normalization="per-token")])
    reporter = quiet()
    result = run_evaluation(spec, reporter, model=model, tokenizer=tokenizer)
    samples = samples_of(spec, result, "mc")
    # Progress per batch, with the running accuracy as a metric at each sample count.
    assert reporter.fractions[-1] == 1.0 and [step for _, step, _ in reporter.metrics] == [2, 4, 6, 7]
    assert reporter.metrics[-1] == ("mc/accuracy", 7, result["benchmarks"]["mc"]["score"])
    questions = [MultipleChoice(s["prompt"], (" A", " B", " C", " D")) for s in samples]
    reference = score_one_prompt_per_option(model, tokenizer, questions, normalization="per-token")
    assert [s["extracted"] for s in samples] == ["ABCD"[r.prediction] for r in reference]
    assert [s["correct"] for s in samples] == [s["extracted"] == row["answer"] for s, row in zip(samples, MC_ROWS)]
    for sample, ref in zip(samples, reference):
        assert sample["option_logprobs"] == pytest.approx(ref.logprobs, abs=1e-4)
    # The prompt is exactly as sent: the few-shot row with its answer, then the question.
    assert samples[1]["prompt"].startswith("Which word names a king?\nA. crown\n") and " A\n\nWhat does a ship" in samples[1]["prompt"]
    bench = result["benchmarks"]["mc"]
    right = sum(s["correct"] for s in samples)
    assert bench["n"] == len(MC_ROWS) and bench["score"] == right / len(MC_ROWS)
    assert bench["ci_low"] <= bench["score"] <= bench["ci_high"]


def test_a_generation_run_through_the_engine_extracts_answers_and_a_changed_extractor_rescores_without_the_model(tiny, tmp_path):
    from workers.core.evaluation.extract import extract

    _, model, tokenizer = tiny
    qa = {"name": "qa", "shape": "qa", "data_path": write_rows(tmp_path / "qa.jsonl", QA_ROWS),
          "scorer": {"paradigm": "generation", "extractor": "last_number"}, "dimension": "math"}
    spec = model_spec(tiny, tmp_path, [qa])
    first = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer)
    samples = samples_of(spec, first, "qa")
    assert [s["reference"] for s in samples] == ["5", "4", "3"]
    assert all(isinstance(s["output"], str) and s["output"] for s in samples)
    assert [s["extracted"] for s in samples] == [extract("last_number", s["output"]) for s in samples]
    assert first["benchmarks"]["qa"]["computed"] == 3
    # The engine (the default generator) gives the same greedy outputs as batched `generate`.
    plain = model_spec(tiny, tmp_path / "plain", [qa], generator="generate")
    assert [s["output"] for s in samples_of(plain, run_evaluation(plain, quiet(), model=model, tokenizer=tokenizer), "qa")] \
        == [s["output"] for s in samples]

    counter = CountingModel(model)
    try:
        spec2 = model_spec(tiny, tmp_path, [{**qa, "scorer": {"paradigm": "generation", "extractor": "regex",
                                                        "answer_pattern": r"(\w+)"}}])
        second = run_evaluation(spec2, quiet(), model=model, tokenizer=tokenizer)
    finally:
        counter.close()
    assert counter.calls == 0 and second["benchmarks"]["qa"]["cached"] == 3
    assert second["benchmarks"]["qa"]["benchmark_hash"] != first["benchmarks"]["qa"]["benchmark_hash"]
    assert [s["output"] for s in samples_of(spec2, second, "qa")] == [s["output"] for s in samples]


def test_a_code_benchmark_runs_the_tiny_models_completions_in_the_sandbox(tiny, tmp_path):
    from workers.core.sandbox.runner import check_available

    if (reason := check_available()) is not None:
        pytest.skip(reason)
    _, model, tokenizer = tiny
    code = {"name": "code", "shape": "code", "data_path": write_rows(tmp_path / "code.jsonl", CODE_ROWS),
            "scorer": {"paradigm": "code", "timeout_s": 3}, "dimension": "code"}
    spec = model_spec(tiny, tmp_path, [code])
    result = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer)
    samples = samples_of(spec, result, "code")
    # A random tiny model writes no working function: each problem ran in the sandbox and failed with a reason.
    assert [s["correct"] for s in samples] == [False, False]
    assert all(s["result"].startswith("failed: ") or s["result"] == "timed out" for s in samples)
    assert result["benchmarks"]["code"]["metric"] == "pass@1" and result["benchmarks"]["code"]["score"] == 0.0
    # The scorer itself passes a right completion (the canonical solution, scored without a run).
    definition = spec.benchmarks[0]
    right = score_sample(definition, CODE_ROWS[0], samples[0]["prompt"], {"output": CODE_ROWS[0]["canonical_solution"]})
    assert right["correct"] is True and right["result"] == "passed"


def test_a_multiple_choice_generation_run_reads_the_option_letter(tiny, tmp_path):
    from workers.core.evaluation.extract import option_letter

    _, model, tokenizer = tiny
    bench = {**_mc(tmp_path), "scorer": {"paradigm": "generation", "extractor": "option"}}
    spec = model_spec(tiny, tmp_path, [bench])
    result = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer)
    samples = samples_of(spec, result, "mc")
    assert [s["extracted"] for s in samples] == [option_letter(s["output"], "ABCD") for s in samples]
    assert [s["reference"] for s in samples] == [row["answer"] for row in MC_ROWS]
    assert result["benchmarks"]["mc"]["correct"] == sum(s["correct"] for s in samples)


def test_a_resumed_run_reuses_cached_predictions_and_equals_an_uninterrupted_run(tiny, tmp_path):
    _, model, tokenizer = tiny
    counter = CountingModel(model)
    try:
        uninterrupted = run_evaluation(model_spec(tiny, tmp_path / "a", [_mc(tmp_path)]), quiet(), model=model, tokenizer=tokenizer)
    finally:
        counter.close()
    full_calls = counter.calls

    spec = model_spec(tiny, tmp_path / "b", [_mc(tmp_path)])
    with pytest.raises(JobCancelled):
        run_evaluation(spec, StopAfter(4), model=model, tokenizer=tokenizer)
    counter = CountingModel(model)
    try:
        resumed = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer)
    finally:
        counter.close()
    bench = resumed["benchmarks"]["mc"]
    assert bench["cached"] == 4 and bench["computed"] == 3
    # 7 rows in batches of 2: the full run ran 4 batches, the resumed one only the 2 for the 3 rows left.
    assert counter.calls == full_calls // 2 and counter.calls > 0
    for field in ("score", "ci_low", "ci_high", "n", "benchmark_hash"):
        assert bench[field] == uninterrupted["benchmarks"]["mc"][field]
    assert samples_of(spec, resumed, "mc") == samples_of(spec, uninterrupted, "mc")


def test_the_same_spec_twice_gives_identical_results(tiny, tmp_path):
    _, model, tokenizer = tiny
    spec = model_spec(tiny, tmp_path, [_mc(tmp_path)])
    first = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer)
    second = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer)
    strip = lambda r: {k: {f: v for f, v in b.items() if f not in ("cached", "computed")} for k, b in r["benchmarks"].items()}  # noqa: E731
    assert strip(first) == strip(second) and second["benchmarks"]["mc"]["cached"] == len(MC_ROWS)


def test_the_benchmark_hash_changes_with_template_fewshot_and_scorer_and_not_with_labels(tiny, tmp_path):
    base = model_spec(tiny, tmp_path, [_mc(tmp_path)]).benchmarks[0]

    def hashed(**change):
        return benchmark_hash(model_spec(tiny, tmp_path, [{**_mc(tmp_path), **change}]).benchmarks[0], "d" * 64)

    original = benchmark_hash(base, "d" * 64)
    assert hashed() == original
    assert hashed(name="renamed", dimension="exam") == original
    assert hashed(template="Q: {question}\n{options}\nA:") != original
    assert hashed(fewshot=[]) != original and hashed(fewshot=[MC_ROWS[1]]) != original
    assert hashed(scorer={"paradigm": "likelihood", "normalization": "per-character"}) != original
    assert hashed(scorer={"paradigm": "likelihood", "normalization": "none"}) == original  # the default, spelled out
    assert benchmark_hash(base, "e" * 64) != original


def _with(**bench_change):
    """A spec change that replaces the first benchmark's fields."""
    return lambda tmp_path: {"benchmarks": [{**_mc(tmp_path), **bench_change}]}


@pytest.mark.parametrize("change, field", [
    (lambda _: {"temperature": 1.0}, "temperature"),
    (lambda _: {"batch_size": 0}, "batch_size"),
    (lambda _: {"generator": "vllm"}, "generator"),
    (lambda _: {"benchmarks": []}, "benchmarks"),
    (lambda _: {"cache_dir": "/etc/puyu"}, "cache_dir"),
    (lambda _: {"benchmarks": [{"name": "x", "shape": "essay"}]}, "benchmarks[0].shape"),
    (_with(data_path="/etc/passwd"), "benchmarks[0].data_path"),
    (_with(colour="red"), "benchmarks[0].colour"),
    (_with(template="{question.__class__}"), "benchmarks[0].template"),
    (_with(fewshot=[{"question": "q"}]), "benchmarks[0].fewshot[0]"),
    (_with(scorer={"paradigm": "code"}), "benchmarks[0].scorer.paradigm"),
    (_with(scorer={"paradigm": "likelihood", "normalization": "per-word"}), "benchmarks[0].scorer.normalization"),
    (_with(scorer={"paradigm": "likelihood", "beam": 4}), "benchmarks[0].scorer.beam"),
])
def test_a_bad_spec_is_refused_with_the_field_named(tiny, tmp_path, change, field):
    params = {"model_dir": str(tiny[0]), "cache_dir": str(tmp_path / "c"), "benchmarks": [_mc(tmp_path)],
              **change(tmp_path)}
    with pytest.raises(SpecError) as error:
        build_spec(EvaluateSpec, params)
    assert error.value.field == field


def test_a_bad_data_line_is_refused_with_its_line_number(tiny, tmp_path):
    bench = _mc(tmp_path)
    (tmp_path / "mc.jsonl").write_text(json.dumps(MC_ROWS[0]) + "\n" + '{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(SpecError) as error:
        run_evaluation(model_spec(tiny, tmp_path, [bench]), quiet(), model=tiny[1], tokenizer=tiny[2])
    assert error.value.field == "benchmarks[0].data_path line 2" and "choices" in error.value.reason


def test_the_command_line_runs_an_evaluation_from_a_spec_file(tiny, tmp_path):
    import yaml

    spec = {"model_dir": str(tiny[0]), "cache_dir": str(tmp_path / "cache"), "benchmarks": [_mc(tmp_path)], "max_samples": 3}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "workers.core", "evaluate", str(tmp_path / "spec.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["benchmarks"]["mc"]["n"] == 3 and len(result["benchmarks"]["mc"]["benchmark_hash"]) == 64
    assert "mc: 3/3 accuracy" in done.stderr


def test_a_perplexity_benchmark_scores_bits_per_byte_as_the_perplexity_module_does(tiny, tmp_path):
    from workers.core.evaluation.perplexity import perplexity

    _, model, tokenizer = tiny
    texts = ["To be, or not to be, that is the question.", "Now is the winter of our discontent.",
             "All the world's a stage, and all the men and women merely players."]
    bench = {"name": "ppl", "shape": "text", "data_path": write_rows(tmp_path / "text.jsonl", [{"text": t} for t in texts]),
             "scorer": {"paradigm": "perplexity", "window": 8, "stride": 4}, "dimension": "language"}
    result = run_evaluation(model_spec(tiny, tmp_path, [bench]), quiet(), model=model, tokenizer=tokenizer)
    expected = perplexity(model, tokenizer, texts, window=8, stride=4)
    assert result["benchmarks"]["ppl"]["metric"] == "bits_per_byte"
    assert result["benchmarks"]["ppl"]["score"] == pytest.approx(expected.bits_per_byte, rel=1e-5)
    assert result["benchmarks"]["ppl"]["perplexity"] == pytest.approx(expected.perplexity, rel=1e-5)


def test_circular_evaluation_counts_a_question_right_only_if_every_rotation_is_right(tiny, tmp_path):
    from workers.core.evaluation.likelihood import MultipleChoice, score_one_prompt_per_option
    from workers.core.evaluation.runner import rotated_rows

    _, model, tokenizer = tiny
    bench = {**_mc(tmp_path, circular=True), "fewshot": []}
    spec = model_spec(tiny, tmp_path, [bench])
    result = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer)
    samples = samples_of(spec, result, "mc")
    for sample, row in zip(samples, MC_ROWS):
        variants = rotated_rows(row)
        assert [v["choices"][0] for v in variants] == row["choices"]  # rotation k starts at choice k
        questions = [MultipleChoice(f"{row['question']}\n" + "\n".join(f"{l}. {c}" for l, c in zip("ABCD", v["choices"]))
                                    + "\nAnswer:", (" A", " B", " C", " D")) for v in variants]
        expected = ["ABCD"[r.prediction] == v["answer"] for r, v in zip(score_one_prompt_per_option(model, tokenizer, questions), variants)]
        assert sample["rotations_correct"] == expected and sample["correct"] == all(expected)
    plain = run_evaluation(model_spec(tiny, tmp_path / "plain", [{**bench, "scorer": {"paradigm": "likelihood"}}]), quiet(),
                           model=model, tokenizer=tokenizer)
    assert result["benchmarks"]["mc"]["score"] <= plain["benchmarks"]["mc"]["score"]
    assert result["benchmarks"]["mc"]["benchmark_hash"] != plain["benchmarks"]["mc"]["benchmark_hash"]
