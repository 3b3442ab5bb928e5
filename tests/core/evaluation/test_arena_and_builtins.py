"""The arena ratings job and the built-in benchmark sets, run as the command line runs them."""
from __future__ import annotations

import json
import math

import pytest

from workers.core.evaluation.builtins import BUILTIN_SETS
from workers.core.evaluation.spec import check_benchmark
from workers.core.kinds import run_core_job
from workers.core.reporting import ConsoleReporter
from workers.core.specs import SpecError


def write_votes(path, votes):
    path.write_text("".join(json.dumps({"a": a, "b": b, "outcome": o}) + "\n" for a, b, o in votes), encoding="utf-8")
    return str(path)


def test_the_ratings_job_rates_the_stronger_model_higher_and_counts_every_vote(tmp_path):
    votes = [("big", "small", "a")] * 30 + [("big", "small", "b")] * 10 + [("big", "small", "tie")] * 4 \
        + [("big", "small", "both_bad")] * 3
    result = run_core_job("arena_ratings", {"votes_path": write_votes(tmp_path / "v.jsonl", votes), "n_resamples": 50},
                          ConsoleReporter())
    ratings = {r["model"]: r for r in result["ratings"]}
    assert result["votes"] == 47 and result["battles"] == 44  # "both bad" is counted, not rated
    assert ratings["big"]["rating"] > 1000 > ratings["small"]["rating"]
    assert ratings["big"]["low"] < ratings["big"]["rating"] < ratings["big"]["high"]
    assert ratings["big"]["wins"] == 30 and ratings["big"]["ties"] == 4 and ratings["big"]["both_bad"] == 3
    # a tie counts half a win: big won 30 + 2 of 44 rated battles
    assert math.isclose(result["win_rate"]["big"]["small"], 32 / 44)


@pytest.mark.parametrize("line, where", [
    ('{"a": "x", "b": "y", "outcome": "maybe"}\n', "battle 1"),
    ('{"a": "x", "b": "x", "outcome": "a"}\n', "battle 1"),
    ('not json\n', "line 1"),
    ('{"a": "x", "b": "y", "outcome": "a"}\n{"a": "x"}\n', "line 2"),
])
def test_a_bad_vote_file_is_refused_naming_the_line(tmp_path, line, where):
    path = tmp_path / "v.jsonl"
    path.write_text(line, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        run_core_job("arena_ratings", {"votes_path": str(path)}, ConsoleReporter())
    assert info.value.field == "votes_path" and where in info.value.reason


def test_every_builtin_definition_is_a_valid_benchmark(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    for name, builtin in BUILTIN_SETS.items():
        checked = check_benchmark(name, {"name": name, "data_path": str(data), **builtin.definition})
        assert checked["shape"] == builtin.canonical


def test_the_builtin_sets_are_written_as_normalized_versions_with_their_definitions(tmp_path):
    names = ["arithmetic_en", "tool_use", "humaneval", "shakespeare", "tang_poetry"]
    outputs = {name: str(tmp_path / f"{name}.jsonl") for name in names}
    result = run_core_job("benchmark_builtins", {"outputs": outputs}, ConsoleReporter())["sets"]
    assert result["humaneval"]["rows"] == 164 and result["humaneval"]["canonical"] == "code"
    assert result["arithmetic_en"]["rows"] == 200 and result["tool_use"]["rows"] == 100  # held out, two calls each
    first = json.loads(open(outputs["tool_use"], encoding="utf-8").readline())
    assert first["answer"].startswith("#### ") and any(ch.isdigit() for ch in first["question"])  # the question, not a greeting
    poems = [json.loads(line)["text"] for line in open(outputs["tang_poetry"], encoding="utf-8")]
    assert all(len(p) >= 1000 or p is poems[-1] for p in poems) and "，" in poems[0]
    assert result["shakespeare"]["definition"] == {"name": "shakespeare", **BUILTIN_SETS["shakespeare"].definition}
    # deterministic: the same data hash on every data dir, so scores stay comparable
    again = run_core_job("benchmark_builtins", {"outputs": {"humaneval": str(tmp_path / "again.jsonl")}}, ConsoleReporter())
    assert again["sets"]["humaneval"]["sha256"] == result["humaneval"]["sha256"]


def test_an_unknown_builtin_set_is_refused():
    with pytest.raises(SpecError) as info:
        run_core_job("benchmark_builtins", {"outputs": {"mmlu": "/x"}}, ConsoleReporter())
    assert info.value.field == "outputs" and "unknown built-in set" in info.value.reason
