"""Merging a LoRA adapter gives a plain model that computes what base + adapter computes."""
import pytest

from workers.core.modelstore import ModelFolderError, inspect_folder, load_causal_lm, merge_adapter
from workers.core.reporting import JobCancelled

PROMPTS = ["First Citizen:\nWe are accounted poor citizens.", "ROMEO:", "What say you, my lord? I pray thee speak."]


def logits(model, tokenizer, prompt):
    import torch

    with torch.inference_mode():
        return model(**tokenizer(prompt, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory, tiny_model_dir, tiny_adapter_dir):
    import io

    from workers.core.reporting import ConsoleReporter

    out = tmp_path_factory.mktemp("merge") / "merged"
    merge_adapter(tiny_model_dir, tiny_adapter_dir, out, ConsoleReporter(stream=io.StringIO()))
    return out


def test_merged_logits_equal_base_plus_adapter_and_differ_from_the_base(merged_dir, tiny_model_dir, tiny_adapter_dir):
    from peft import PeftModel

    peft_model, tokenizer = load_causal_lm(tiny_adapter_dir, base_folder=tiny_model_dir)
    assert isinstance(peft_model, PeftModel)
    merged, _ = load_causal_lm(merged_dir)
    base, _ = load_causal_lm(tiny_model_dir)
    for prompt in PROMPTS:
        expected = logits(peft_model, tokenizer, prompt)
        assert (logits(merged, tokenizer, prompt) - expected).abs().max() < 1e-4
        assert (logits(base, tokenizer, prompt) - expected).abs().max() > 1e-3  # the adapter matters


def test_the_merged_folder_loads_with_plain_transformers_and_no_peft(merged_dir, tiny_model_dir):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged_dir, local_files_only=True)
    assert type(model) is LlamaForCausalLM
    assert not any("lora" in name for name, _ in model.named_parameters())
    facts = inspect_folder(merged_dir)
    assert facts.kind == "base" and facts.has_chat_template
    assert facts.parameter_count == inspect_folder(tiny_model_dir).parameter_count


def test_the_merge_reports_progress_through_the_reporter(tmp_path, tiny_model_dir, tiny_adapter_dir, reporter):
    merge_adapter(tiny_model_dir, tiny_adapter_dir, tmp_path / "merged", reporter)
    assert reporter.fractions[0] == 0.0 and reporter.fractions[-1] == 1.0
    assert reporter.fractions == sorted(reporter.fractions)


def test_a_cancelled_merge_leaves_nothing_behind(tmp_path, tiny_model_dir, tiny_adapter_dir, reporter):
    reporter.stop_requested = True
    with pytest.raises(JobCancelled):
        merge_adapter(tiny_model_dir, tiny_adapter_dir, tmp_path / "merged", reporter)
    assert list(tmp_path.iterdir()) == []


def test_merging_into_an_existing_folder_is_refused(tmp_path, tiny_model_dir, tiny_adapter_dir, reporter):
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "other.txt").write_text("x")
    with pytest.raises(ModelFolderError, match="not an empty folder"):
        merge_adapter(tiny_model_dir, tiny_adapter_dir, tmp_path / "merged", reporter)
