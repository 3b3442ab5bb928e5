"""Chat-formatted prompts: a benchmark with `chat: true` sends its rendered prompt as one user
message through the model's chat template, the text stored is the text after the template, and
the model sees exactly those tokens (no second BOS)."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.core.evaluation.helpers import CountingModel, model_spec, quiet, samples_of, write_rows
from workers.core.data.generators import CALCULATOR_TOOL
from workers.core.evaluation.runner import render_prompt, request_prompt, run_evaluation
from workers.core.evaluation.spec import benchmark_hash, prediction_hash
from workers.core.evaluation.targets import LocalTarget
from workers.core.specs import SpecError

QA_ROWS = [
    {"question": "What is 2 + 3?", "answer": "#### 5"},
    {"question": "What is 10 - 7?", "answer": "#### 3"},
    {"question": "What is 4 * 4?", "answer": "#### 16"},
]
MC_ROWS = [
    {"question": "What is cold?", "choices": ["fire", "sun", "ice", "heat"], "answer": "C"},
    {"question": "Which one flies?", "choices": ["fish", "stone", "bird", "wall"], "answer": "C"},
]


def _qa(tmp_path, **extra):
    return {"name": "qa", "shape": "qa", "data_path": write_rows(tmp_path / "qa.jsonl", QA_ROWS),
            "fewshot": [QA_ROWS[0]], "chat": True, "scorer": {"paradigm": "generation", "extractor": "gsm8k"},
            "dimension": "math", **extra}


def _independent_greedy(model, tokenizer, text, new_tokens):
    """Greedy tokens of `text` tokenized as a chat template's output: no special tokens added."""
    import torch

    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("generator", ["engine", "generate"])
def test_a_chat_benchmark_sends_the_rendered_prompt_as_one_user_message_through_the_chat_template(tiny, tmp_path, generator):
    _, model, tokenizer = tiny
    spec = model_spec(tiny, tmp_path, [_qa(tmp_path)], generator=generator)
    result = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer)
    samples = samples_of(spec, result, "qa")
    definition = spec.benchmarks[0]
    for sample, row in zip(samples, QA_ROWS):
        content = render_prompt(definition, row)
        assert content.startswith("Question: What is 2 + 3?\nAnswer: #### 5\n\nQuestion: ")  # the few-shot block inside
        expected = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                 tokenize=False)
        assert sample["prompt"] == expected
        assert sample["prompt"].startswith("<|im_start|>user\n") and sample["prompt"].endswith("<|im_start|>assistant\n")
        assert sample["output"] == _independent_greedy(model, tokenizer, expected, spec.max_new_tokens)


def test_chat_likelihood_scores_the_options_after_the_templated_prompt(tiny, tmp_path):
    from workers.core.evaluation.likelihood import MultipleChoice, score_one_prompt_per_option

    _, model, tokenizer = tiny
    bench = {"name": "mc", "shape": "multiple_choice", "data_path": write_rows(tmp_path / "mc.jsonl", MC_ROWS),
             "chat": True, "scorer": {"paradigm": "likelihood"}}
    spec = model_spec(tiny, tmp_path, [bench])
    samples = samples_of(spec, run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer), "mc")
    assert all(s["prompt"].startswith("<|im_start|>user\nWhat is cold?" if i == 0 else "<|im_start|>user\n")
               for i, s in enumerate(samples))
    reference = score_one_prompt_per_option(model, tokenizer, [MultipleChoice(s["prompt"], (" A", " B", " C", " D"))
                                                               for s in samples], add_special_tokens=False)
    for sample, ref in zip(samples, reference):
        assert sample["option_logprobs"] == pytest.approx(ref.logprobs, abs=1e-4)


def test_chat_tools_and_the_template_name_are_part_of_both_hashes_and_defaults_keep_old_hashes(tiny, tmp_path):
    plain = {**_qa(tmp_path), "chat": False}
    old_style = dict(model_spec(tiny, tmp_path, [plain]).benchmarks[0])
    for key in ("chat", "tools", "chat_template"):  # a definition stored before these settings existed
        old_style.pop(key)

    def hashes(**change):
        definition = model_spec(tiny, tmp_path, [{**plain, **change}]).benchmarks[0]
        return benchmark_hash(definition, "d" * 64), prediction_hash(definition, "d" * 64, 8)

    assert hashes() == (benchmark_hash(old_style, "d" * 64), prediction_hash(old_style, "d" * 64, 8))
    chat = hashes(chat=True)
    tools = hashes(chat=True, tools=[CALCULATOR_TOOL], chat_template="chatml-tools")
    named = hashes(chat=True, chat_template="chatml")
    assert len({hashes(), chat, tools, named}) == 4
    for bench, predicted in (chat, tools, named):
        assert bench != predicted
    # The extractor changes the benchmark version but not the model's output.
    other = hashes(chat=True, scorer={"paradigm": "generation", "extractor": "final_number"})
    assert other[0] != chat[0] and other[1] == chat[1]


def test_a_model_without_a_chat_template_refuses_chat_naming_the_field_and_computes_nothing(tiny, tmp_path):
    folder = tmp_path / "no-template"
    shutil.copytree(tiny[0], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    counter = CountingModel(tiny[1])
    try:
        spec = model_spec((folder,), tmp_path, [_qa(tmp_path)])
        with pytest.raises(SpecError) as error:
            run_evaluation(spec, quiet())  # loads the tokenizer of `folder` alone
    finally:
        counter.close()
    assert error.value.field == "benchmarks[0].chat" and "no chat template" in error.value.reason
    assert not (tmp_path / "cache").exists() and counter.calls == 0


def test_tools_reach_the_prompt_and_a_template_that_cannot_render_them_is_refused(tiny, tmp_path):
    import copy

    _, model, tokenizer = tiny
    # (The tools' system turn is longer than the tiny model's 256-token context: the prompts alone are checked.)
    bench = _qa(tmp_path, tools=[CALCULATOR_TOOL], scorer={"paradigm": "generation", "extractor": "tool_call"},
                dimension="agent")
    definition = model_spec(tiny, tmp_path, [bench]).benchmarks[0]
    # The tiny model's own ChatML template ignores tools (as SmolLM2's does): ChatML with the tools block instead.
    prompt = request_prompt(LocalTarget(tiny[0], model=model, tokenizer=tokenizer), "benchmarks[0]", definition,
                            QA_ROWS[1]).text
    assert prompt.startswith("<|im_start|>system\n# Tools") and json.dumps(CALCULATOR_TOOL) in prompt
    assert "<tool_call>" in prompt and prompt.endswith("Question: What is 10 - 7?\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    named = model_spec(tiny, tmp_path, [{**bench, "chat_template": "chatml-tools"}]).benchmarks[0]
    assert request_prompt(LocalTarget(tiny[0], model=model, tokenizer=tokenizer), "benchmarks[0]", named,
                          QA_ROWS[1]).text == prompt

    plain = copy.deepcopy(tokenizer)  # a template in another format, that drops tools
    plain.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    with pytest.raises(SpecError) as error:
        run_evaluation(model_spec(tiny, tmp_path, [bench]), quiet(), model=model, tokenizer=plain)
    assert error.value.field == "benchmarks[0].tools" and "chat_template" in error.value.reason
    with pytest.raises(SpecError) as error:
        run_evaluation(model_spec(tiny, tmp_path, [{**bench, "chat_template": "chatml"}]), quiet(), model=model,
                       tokenizer=tokenizer)
    assert error.value.field == "benchmarks[0].tools"
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_smollm2_instruct_answers_chinese_word_problems_through_its_own_chat_template(tmp_path):
    """The real instruct model: the prompt stored is SmolLM2's template around the rendered
    prompt, and each answer is the one an independent greedy `generate` gives on those tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.core.data.generators import arithmetic_word_problems_zh
    from workers.core.modelstore import convert_gguf, find_starter_gguf

    folder = tmp_path / "smollm2"
    convert_gguf(find_starter_gguf(), folder, quiet())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    rows = [{"question": r["question"], "answer": r["answer"]} for r in arithmetic_word_problems_zh(2, seed=0)]
    suffix = "\n请一步一步思考，最后写出“答案是 N”。"
    bench = {"name": "zh", "shape": "qa", "data_path": write_rows(tmp_path / "zh.jsonl", rows), "chat": True,
             "template": "{question}" + suffix, "scorer": {"paradigm": "generation", "extractor": "final_number"},
             "dimension": "chinese"}
    spec = model_spec((folder,), tmp_path, [bench], batch_size=1, max_new_tokens=32, generator="generate")
    result = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer)
    samples = samples_of(spec, result, "zh")

    for sample, row in zip(samples, rows):
        expected = tokenizer.apply_chat_template([{"role": "user", "content": row["question"] + suffix}],
                                                 add_generation_prompt=True, tokenize=False)
        assert sample["prompt"] == expected and "<|im_start|>system\n" in expected  # SmolLM2's default system turn
        assert sample["reference"] == row["answer"].rsplit("#### ", 1)[1]
    # One answer recomputed independently (CPU time is scarce): the same greedy tokens.
    assert samples[0]["output"] == _independent_greedy(model, tokenizer, samples[0]["prompt"], 32)
    bench_result = result["benchmarks"]["zh"]
    assert bench_result["n"] == 2 and bench_result["ci_low"] <= bench_result["score"] <= bench_result["ci_high"]
