"""Stage 7 of cleaning: records sharing a 13-gram with a selected evaluation set are dropped."""
import io
import json

from workers.core.data.cleaning import CleaningSpec, run_cleaning
from workers.core.reporting import ConsoleReporter

ONLY = dict(normalize=False, quality=False, dedup_exact=False, dedup_near=False, pii=False)
QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")
POEM = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _clean(tmp_path, texts, evals, **spec):
    src = _write(tmp_path / "in.jsonl", [{"text": t, "meta": {"line": i}} for i, t in enumerate(texts, 1)])
    paths, formats = [], []
    for name, (fmt, records) in evals.items():
        paths.append(_write(tmp_path / f"{name}.jsonl", records))
        formats.append(fmt)
    report = run_cleaning(src, tmp_path / "out.jsonl", "text", CleaningSpec(**{**ONLY, **spec}),
                          ConsoleReporter(stream=io.StringIO()), eval_paths=paths, eval_canonicals=formats)
    kept = [json.loads(line)["meta"]["line"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    return report["stages"][6], kept


def test_a_record_sharing_a_13_gram_with_an_eval_set_is_dropped_and_one_sharing_12_words_is_kept(tmp_path):
    words = QUESTION.split()
    texts = [
        "Homework help: " + " ".join(words[3:16]) + " and so on.",          # 13 words of the question
        "Homework help: " + " ".join(words[3:15]) + " and so on.",          # only 12
        "A recipe for dumplings with pork, cabbage, ginger and a little soy sauce, steamed for ten minutes.",
        "NATALIA sold clips to 48 of her friends in April; and then, she sold half as many clips in May!",
    ]
    stage, kept = _clean(tmp_path, texts, {"gsm8k": ("qa", [{"question": QUESTION, "answer": "72"}])})
    assert kept == [2, 3]  # case and punctuation do not hide an overlap (line 4)
    assert stage["drop_reasons"] == {"eval:gsm8k": 2}
    assert stage["examples"][0]["reason"] == ("shares the 13-gram 'to 48 of her friends in april and then she sold half "
                                              "as' with evaluation set gsm8k")
    n_tokens = len(words) + 1  # the question and the answer "72"
    assert stage["eval_sets"] == {"gsm8k": {"items": 1, "ngrams": n_tokens - 12, "items_shorter_than_n": 0,
                                            "dropped_docs": 2}}


def test_chinese_overlap_is_counted_in_characters_and_sets_of_every_format_are_read(tmp_path):
    texts = ["今天我们来读一首诗：床前明月光，疑是地上霜。举头望明月。", "今天我们来读一首诗：床前明月光，疑是地上霜。"]
    evals = {
        "poems": ("multiple_choice", [{"question": "下面哪一句出自《静夜思》？", "choices": [POEM, "白日依山尽"],
                                       "answer": "A"}]),
        "code": ("code", [{"task_id": "t/0", "prompt": "def add(a, b):\n    return a + b\n", "tests": "", "entry_point": "add"}]),
    }
    stage, kept = _clean(tmp_path, texts, evals)
    assert kept == [2]  # 12 characters of the poem only
    assert stage["drop_reasons"] == {"eval:poems": 1}
    assert stage["eval_sets"]["code"]["items_shorter_than_n"] == 1


def test_without_evaluation_sets_the_stage_is_skipped_and_says_why(tmp_path):
    stage, kept = _clean(tmp_path, [QUESTION], {})
    assert kept == [1]
    assert (stage["enabled"], stage["skipped"]) == (False, "no evaluation sets selected")
    assert stage["input_docs"] == stage["kept_docs"] == 1


def test_the_ngram_length_is_taken_from_the_spec(tmp_path):
    texts = ["Homework help: " + " ".join(QUESTION.split()[3:11]) + " and so on."]  # 8 words
    stage, kept = _clean(tmp_path, texts, {"gsm8k": ("qa", [{"question": QUESTION, "answer": "72"}])},
                         decontam_ngram=8)
    assert kept == [] and stage["ngram"] == 8
