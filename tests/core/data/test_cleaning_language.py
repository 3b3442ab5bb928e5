"""Stage 2 of cleaning: language identification (langid's model, batched) and the keep list.

The langid model loads once per process (~3 s) and is shared by every test that needs it."""
import io
import json
import random

import pytest

from workers.core.data.cleaning import CleaningSpec, run_cleaning
from workers.core.data.cleaning.language import LANGID_CODES, identifier
from workers.core.reporting import ConsoleReporter
from workers.core.specs import SpecError, build_spec

SAMPLES = {
    "en": "The committee will publish its final report on the new railway line next spring.",
    "zh": "今天天气很好，我们一起去公园散步吧。这个城市的历史非常悠久，有很多名胜古迹。",
    "fr": "Le comité publiera son rapport final sur la nouvelle ligne de chemin de fer au printemps prochain.",
    "de": "Der Ausschuss wird seinen Abschlussbericht über die neue Bahnstrecke im nächsten Frühjahr veröffentlichen.",
    "ru": "Комитет опубликует свой окончательный доклад о новой железнодорожной линии следующей весной.",
    "ja": "委員会は来春、新しい鉄道路線に関する最終報告書を公表する予定です。",
}
ONLY_LANGUAGE = dict(normalize=False, quality=False, dedup_exact=False, dedup_near=False, pii=False, decontaminate=False)


@pytest.fixture(scope="module")
def langid_batch():
    return identifier()


def test_the_batched_identifier_gives_exactly_langids_answer(langid_batch):
    rng = random.Random(0)
    texts = list(SAMPLES.values()) + ["", "a", "x = 1 + 2  # ... 12345", "مرحبا بالعالم"]
    texts += ["".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randint(0, 300))) for _ in range(150)]
    texts.append(SAMPLES["en"] * 40)  # longer than the 1,000 characters looked at
    expected = [langid_batch.langid.classify(t[:1000])[0] for t in texts]
    assert langid_batch.classify(texts) == expected
    assert langid_batch.classify(list(SAMPLES.values())) == list(SAMPLES)


def test_the_validated_code_list_is_langids_own(langid_batch):
    assert set(langid_batch.classes) == LANGID_CODES


def _run(tmp_path, languages):
    src = tmp_path / "in.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i, text in enumerate(SAMPLES.values(), 1):
            f.write(json.dumps({"text": text, "meta": {"line": i}}, ensure_ascii=False) + "\n")
    report = run_cleaning(src, tmp_path / "out.jsonl", "text", CleaningSpec(languages=languages, **ONLY_LANGUAGE),
                          ConsoleReporter(stream=io.StringIO()))
    kept = [json.loads(line)["text"] for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    return report["stages"][1], kept


def test_a_keep_list_of_en_and_zh_keeps_english_and_chinese_and_drops_the_rest(tmp_path):
    stage, kept = _run(tmp_path, "en, zh")
    assert kept == [SAMPLES["en"], SAMPLES["zh"]]
    assert stage["drop_reasons"] == {"language:fr": 1, "language:de": 1, "language:ru": 1, "language:ja": 1}
    assert stage["languages"] == dict.fromkeys(SAMPLES, 1)
    assert stage["keep"] == ["en", "zh"]
    assert stage["examples"][0]["reason"] == "identified as 'fr', not in the keep list (en, zh)"


def test_an_empty_keep_list_keeps_everything_and_still_reports_the_mix(tmp_path):
    stage, kept = _run(tmp_path, "")
    assert len(kept) == len(SAMPLES)
    assert stage["enabled"] and stage["dropped_docs"] == 0
    assert stage["languages"] == dict.fromkeys(SAMPLES, 1)


def test_an_unknown_language_code_is_a_spec_error_that_names_the_field():
    with pytest.raises(SpecError) as err:
        build_spec(CleaningSpec, {"languages": "en,klingon"})
    assert err.value.field == "languages" and "klingon" in err.value.reason
