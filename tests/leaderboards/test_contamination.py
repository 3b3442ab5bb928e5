"""The contamination flag: ✓ (clean) when every training dataset in a version's ancestry was
decontaminated against the benchmark's data, ⚠ (contaminated) when one was not, "unknown"
when the version has no training lineage."""
import pytest

from apps.datasets.models import DatasetVersionUse
from apps.jobs.models import Job
from apps.leaderboards import board, contamination

pytestmark = pytest.mark.django_db


@pytest.fixture
def lineage(users, make_dataset, make_version, make_benchmark):
    """A benchmark; raw training data; the same data cleaned with decontamination against a copy
    of the benchmark's data (another dataset, the same bytes); an imported base."""
    owner = users["owner"]
    quiz = make_benchmark(owner, "quiz")
    copy_of_quiz = make_dataset(owner, name="quiz-copy")  # same rows: the same sha256
    other_eval = make_dataset(owner, "qa", name="other-eval")
    raw = make_dataset(owner, "qa", name="web-text")

    def cleaned(parent, against, decontaminate=True):
        job = Job.objects.create(owner=owner, kind="dataset_clean", params={"cleaning": {"decontaminate": decontaminate}})
        version = make_dataset(owner, "qa", name="web-text", parent=parent, source_job=job)
        DatasetVersionUse.objects.create(version=parent, job=job, role="input")
        for eval_version in against:
            DatasetVersionUse.objects.create(version=eval_version, job=job, role="decontamination")
        return version

    def trained(data, base, name, kind="adapter"):
        job = Job.objects.create(owner=owner, kind="train", params={})
        for version in data:
            DatasetVersionUse.objects.create(version=version, job=job, role="train")
        return make_version(owner, name, kind=kind, parent=base, source_job=job)

    base = make_version(owner, "imported-base")
    return {"quiz": quiz, "copy": copy_of_quiz, "other": other_eval, "raw": raw, "base": base,
            "cleaned": cleaned, "trained": trained}


def test_an_imported_model_has_no_lineage_so_its_flag_is_unknown(lineage):
    assert contamination.flag(lineage["base"], lineage["quiz"]) == "unknown"


def test_training_on_data_never_decontaminated_against_the_benchmark_is_contaminated(lineage):
    tuned = lineage["trained"]([lineage["raw"]], lineage["base"], "tuned")
    assert contamination.flag(tuned, lineage["quiz"]) == "contaminated"
    other = lineage["trained"]([lineage["cleaned"](lineage["raw"], [lineage["other"]])], lineage["base"], "other")
    assert contamination.flag(other, lineage["quiz"]) == "contaminated"  # cleaned, but against another set
    switched_off = lineage["trained"]([lineage["cleaned"](lineage["raw"], [lineage["copy"]], decontaminate=False)],
                                      lineage["base"], "off")
    assert contamination.flag(switched_off, lineage["quiz"]) == "contaminated"


def test_training_only_on_data_decontaminated_against_the_benchmarks_hash_is_clean_through_the_ancestry(
        lineage, make_version, users):
    clean_data = lineage["cleaned"](lineage["raw"], [lineage["copy"], lineage["other"]])
    later = lineage["cleaned"](clean_data, [])  # a later cleaning step keeps the earlier decontamination
    adapter = lineage["trained"]([later], lineage["base"], "tuned")
    assert contamination.flag(adapter, lineage["quiz"]) == "clean"
    merged = make_version(users["owner"], "tuned", kind="merged", parent=lineage["base"])
    merged.adapter = adapter
    merged.save()
    assert contamination.flag(merged, lineage["quiz"]) == "clean"  # through the adapter it was merged from
    mixed = lineage["trained"]([later, lineage["raw"]], merged, "mixed", kind="base")
    assert contamination.flag(mixed, lineage["quiz"]) == "contaminated"  # one raw set is enough


def test_the_board_shows_each_rows_flag(users, lineage, make_suite, finished_run):
    owner = users["owner"]
    suite = make_suite(owner, [lineage["quiz"]])
    clean = lineage["trained"]([lineage["cleaned"](lineage["raw"], [lineage["copy"]])], lineage["base"], "clean")
    dirty = lineage["trained"]([lineage["raw"]], lineage["base"], "dirty")
    for version in (clean, dirty, lineage["base"]):
        version.kind = "base"  # adapters are evaluated merged; the flag only reads the lineage
        version.save()
        finished_run(owner, suite, version, {lineage["quiz"]: [True, False]})
    flags = {row["label"]: row["scores"][lineage["quiz"].pk]["contamination"] for row in board.leaderboard(owner, suite)["rows"]}
    assert flags == {"clean v1": "clean", "dirty v1": "contaminated", "imported-base v1": "unknown"}
