"""tokenize_and_pack: a dataset version becomes packed arrays once, then comes from the cache."""
from __future__ import annotations

import json

import pytest

from tests.fixtures.tiny_models import train_tokenizer
from workers.core.data.generators import arithmetic_word_problems, tool_use_dialogues, write_jsonl
from workers.core.data.packing import MANIFEST, load_packed, pack, tokenize_and_pack
from workers.core.data.tokenize import IGNORE_INDEX, render_record
from workers.core.reporting import ConsoleReporter, JobCancelled


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def chat_version(tmp_path):
    path = tmp_path / "version.jsonl"
    write_jsonl(tool_use_dialogues(300, seed=1), path)
    return path


def quiet():
    import io

    return ConsoleReporter(stream=io.StringIO())


def test_the_second_call_is_a_cache_hit_that_tokenizes_nothing_and_rewrites_nothing(tmp_path, chat_version,
                                                                                     tokenizer_dir, monkeypatch):
    from workers.core.data import packing

    rendered = []
    real_render = packing.render_record
    monkeypatch.setattr(packing, "render_record", lambda *a, **k: rendered.append(1) or real_render(*a, **k))
    cache = tmp_path / "cache"
    folder, cold = tokenize_and_pack(chat_version, "chat", tokenizer_dir, seq_len=256, chat_template=None,
                                     cache_dir=cache, reporter=quiet())
    assert len(rendered) == 300  # every record tokenized once
    files = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    reporter = quiet()
    again, hit = tokenize_and_pack(chat_version, "chat", tokenizer_dir, seq_len=256, chat_template=None,
                                   cache_dir=cache, reporter=reporter)

    assert len(rendered) == 300  # and not again
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in again.iterdir()} == files and MANIFEST in files
    assert any("found in cache" in line for line in reporter.lines)
    assert cold["cache_hit"] is False and hit["cache_hit"] is True and again == folder
    assert {k: v for k, v in hit.items() if k not in ("cache_hit", "seconds")} == \
        {k: v for k, v in cold.items() if k not in ("cache_hit", "seconds")}
    assert cold["samples"] == 300 and cold["packs"] < 300 and cold["loss_tokens"] > 0


def test_the_cached_arrays_are_the_packs_of_the_rendered_records(tmp_path, chat_version, tokenizer_dir):
    from transformers import AutoTokenizer

    folder, stats = tokenize_and_pack(chat_version, "chat", tokenizer_dir, seq_len=256, chat_template=None,
                                      cache_dir=tmp_path / "cache")
    data = load_packed(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    records = [json.loads(line) for line in chat_version.read_text().splitlines()]
    expected = pack([render_record(r, "chat", tokenizer, max_length=256) for r in records], 256,
                    pad_id=tokenizer.pad_token_id)

    assert data["input_ids"].shape == (stats["packs"], 256) == (len(expected), 256)
    assert data["input_ids"].tolist() == [p["input_ids"] for p in expected]
    assert data["labels"].tolist() == [p["labels"] for p in expected]
    assert data["position_ids"].tolist() == [p["position_ids"] for p in expected]
    offsets = data["pack_offsets"].tolist()
    assert [data["seq_lens"][a:b].tolist() for a, b in zip(offsets, offsets[1:])] == [p["seq_lens"] for p in expected]
    assert sorted(data["sample_index"].tolist()) == list(range(300))
    assert int((data["labels"] != IGNORE_INDEX).sum()) == stats["loss_tokens"]
    assert data["manifest"]["stats"]["tokens"] == stats["tokens"] == int(data["seq_lens"].sum())


def test_a_different_seq_len_or_template_misses_the_cache(tmp_path, chat_version, tokenizer_dir):
    cache = tmp_path / "cache"
    first, _ = tokenize_and_pack(chat_version, "chat", tokenizer_dir, seq_len=256, chat_template=None, cache_dir=cache)
    other, stats = tokenize_and_pack(chat_version, "chat", tokenizer_dir, seq_len=128, chat_template=None,
                                     cache_dir=cache)
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}"
    third, stats3 = tokenize_and_pack(chat_version, "chat", tokenizer_dir, seq_len=256, chat_template=template,
                                      cache_dir=cache)

    assert stats["cache_hit"] is False and stats3["cache_hit"] is False
    assert len({first, other, third}) == 3


def test_a_half_written_cache_without_manifest_is_ignored_and_rebuilt(tmp_path, chat_version, tokenizer_dir):
    cache = tmp_path / "cache"
    folder, _ = tokenize_and_pack(chat_version, "chat", tokenizer_dir, seq_len=256, chat_template=None, cache_dir=cache)
    (folder / MANIFEST).unlink()  # as if the writer died before its last step
    (folder / "labels.npy").write_bytes(b"garbage")

    again, stats = tokenize_and_pack(chat_version, "chat", tokenizer_dir, seq_len=256, chat_template=None,
                                     cache_dir=cache)

    assert again == folder and stats["cache_hit"] is False
    assert (folder / MANIFEST).exists() and load_packed(folder)["labels"].shape == (stats["packs"], 256)
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no staging folder left behind
    _, third = tokenize_and_pack(chat_version, "chat", tokenizer_dir, seq_len=256, chat_template=None, cache_dir=cache)
    assert third["cache_hit"] is True


def test_long_pretraining_documents_are_split_into_chunks_without_losing_tokens(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    docs = [{"text": "Friends, Romans, countrymen, lend me your ears. " * 40}, {"text": "Short."}]
    path = tmp_path / "text.jsonl"
    write_jsonl(docs, path)

    folder, stats = tokenize_and_pack(path, "text", tokenizer_dir, seq_len=128, chat_template=None,
                                      cache_dir=tmp_path / "cache")

    expected_tokens = sum(len(tokenizer(d["text"])["input_ids"]) + 1 for d in docs)  # + eos
    assert stats["tokens"] == expected_tokens and stats["split_documents"] == 1 and stats["truncated"] == 0
    assert int(load_packed(folder)["seq_lens"].max()) <= 128


def test_qa_versions_pack_and_report_progress(tmp_path, tokenizer_dir):
    path = tmp_path / "qa.jsonl"
    write_jsonl(arithmetic_word_problems(50, seed=4), path)
    reporter = quiet()

    _, stats = tokenize_and_pack(path, "qa", tokenizer_dir, seq_len=512, chat_template=None,
                                 cache_dir=tmp_path / "cache", reporter=reporter)

    assert stats["samples"] == 50 and reporter.fractions[-1] == 1.0


def test_a_cancelled_job_stops_and_leaves_no_cache_folder(tmp_path, chat_version, tokenizer_dir):
    reporter = quiet()
    reporter.stop_requested = True
    cache = tmp_path / "cache"

    with pytest.raises(JobCancelled):
        tokenize_and_pack(chat_version, "chat", tokenizer_dir, seq_len=256, chat_template=None, cache_dir=cache,
                          reporter=reporter)
    assert not cache.exists() or list(cache.iterdir()) == []
