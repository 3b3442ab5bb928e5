"""Statistics of a written version: rows, characters, tokens with a tokenizer, languages (langid),
a length histogram, rows over a maximum length, chat turns and exact duplicates."""
import json

import pytest

from tests.core.data.fixtures.import_support import excerpt, fixture, head_json_array
from workers.core.data import formats


@pytest.fixture(scope="module")
def word_tokenizer():
    """A transformers tokenizer with one token per whitespace-separated word, so counts are exact."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="[UNK]")


def version_of(path, tmp_path, fmt=None):
    out = tmp_path / f"{path.stem}.normalized.jsonl"
    formats.write_normalized(path, path.name, fmt, out)
    return out


@pytest.mark.parametrize("relative, language", [
    ("llamafactory_demo/alpaca_zh_demo.json", "zh"),
    ("llamafactory_demo/alpaca_en_demo.json", "en"),
])
def test_the_languages_of_a_chinese_and_an_english_file_are_reported(tmp_path, relative, language):
    sample = head_json_array(excerpt(relative), 30, tmp_path / excerpt(relative).name)
    stats = formats.dataset_stats(version_of(sample, tmp_path), "chat")
    assert stats["rows"] == 30
    assert next(iter(stats["languages"])) == language  # the most common first
    assert stats["languages"][language] >= 27
    assert stats["turns"] == {"1": 30}
    assert stats["length_unit"] == "chars" and "tokens" not in stats


def test_tokens_histogram_max_length_and_duplicates_are_counted(tmp_path, word_tokenizer):
    texts = ["a b c", "a  b\nc", "one two three four five", "x " * 40, "a b c"]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    stats = formats.dataset_stats(version_of(path, tmp_path), "text", word_tokenizer, max_length=4)
    assert (stats["rows"], stats["tokens"], stats["length_unit"]) == (5, 3 + 3 + 5 + 40 + 3, "tokens")
    assert stats["chars"] == sum(len(t) for t in texts)  # a JSON text field is kept as it is
    assert stats["over_max_length"] == 2  # 5 and 40 tokens
    assert stats["exact_duplicates"] == 2  # whitespace differences do not make a text new
    histogram = stats["length_histogram"]
    assert len(histogram["edges"]) == len(histogram["counts"]) + 1 and sum(histogram["counts"]) == 5
    assert histogram["edges"][0] == 0 and histogram["edges"][-1] > 40
    assert stats["length"]["max"] == 40 and stats["length"]["p50"] == 3
    assert "turns" not in stats


def test_chat_turns_are_counted_by_user_turns_and_the_result_survives_a_json_round_trip(tmp_path):
    stats = formats.dataset_stats(version_of(fixture("sharegpt.jsonl"), tmp_path), "chat", max_length=10_000)
    assert stats["turns"] == {"1": 1, "2": 1}
    assert stats["over_max_length"] == 0
    assert json.loads(json.dumps(stats)) == stats


def test_an_unknown_canonical_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown canonical format 'alpaca'"):
        formats.dataset_stats(fixture("qa.jsonl"), "alpaca")
