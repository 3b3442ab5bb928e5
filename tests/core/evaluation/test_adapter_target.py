"""A LoRA adapter is evaluated as trained: on its base with peft, unmerged, under a cache key of
its own (base + adapter), giving what the merged model gives."""
from __future__ import annotations

import math

import pytest

from tests.core.evaluation.helpers import model_spec, quiet, samples_of, write_rows
from tests.fixtures.tiny_models import build_tiny_lora_adapter
from workers.core.evaluation.runner import run_evaluation

ROWS = [{"question": f"{a} plus {b} is", "choices": [str(a + b), str(a + b + 1), str(a - b), "none"], "answer": "A"}
        for a, b in [(2, 3), (7, 1), (4, 4), (9, 5), (6, 2), (3, 8)]]


@pytest.fixture(scope="module")
def adapter_and_merged(tiny, tmp_path_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("eval-adapter")
    adapter = build_tiny_lora_adapter(tiny[0], folder / "adapter", seed=3)
    base = AutoModelForCausalLM.from_pretrained(tiny[0], local_files_only=True)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(folder / "merged", safe_serialization=True)
    tiny[2].save_pretrained(folder / "merged")
    return adapter, folder / "merged"


def test_an_adapter_scores_like_its_merged_model_and_unlike_its_base(tiny, adapter_and_merged, tmp_path):
    adapter, merged = adapter_and_merged
    bench = [{"name": "sums", "shape": "multiple_choice", "data_path": write_rows(tmp_path / "mc.jsonl", ROWS),
              "scorer": {"paradigm": "likelihood", "continuation": "text"}}]
    runs = {}
    for label, extra in {"base": {}, "adapter": {"adapter_dir": str(adapter)},
                         "merged": {"model_dir": str(merged)}}.items():
        spec = model_spec(tiny, tmp_path, bench, **extra)
        result = run_evaluation(spec, quiet())
        runs[label] = (result["model_hash"], [s["option_logprobs"] for s in samples_of(spec, result, "sums")])
    hashes = {label: h for label, (h, _) in runs.items()}
    assert len(set(hashes.values())) == 3  # the adapter's predictions never reuse the base's cache
    for got, want in zip(runs["adapter"][1], runs["merged"][1]):
        assert all(math.isclose(g, w, abs_tol=1e-3) for g, w in zip(got, want))
    assert any(not math.isclose(g, w, abs_tol=1e-3) for a, b in zip(runs["adapter"][1], runs["base"][1]) for g, w in zip(a, b))
