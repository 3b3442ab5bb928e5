"""Arena votes: only on versions the voter may see, with a valid outcome; ratings are a job's
(started here, rated in test_tasks.py) and shown only for the versions a user may see."""
import pytest
from django.http import Http404

from apps.jobs.models import Job
from apps.leaderboards import arena
from apps.leaderboards.models import ArenaRatingSnapshot, ArenaVote
from apps.leaderboards.services import RefusedInput

pytestmark = pytest.mark.django_db


@pytest.fixture
def pair(users, make_version):
    return make_version(users["owner"], "left"), make_version(users["owner"], "right")


def test_a_vote_is_stored_with_its_battle(users, pair):
    vote = arena.record_vote(users["teammate"], model_a=pair[0], model_b=pair[1], outcome="tie", prompt="Say hi",
                             battle="b-123")
    assert (vote.voter, vote.model_a, vote.model_b, vote.outcome, vote.battle) == (users["teammate"], *pair, "tie", "b-123")
    assert list(arena.my_votes(users["teammate"])) == [vote] and not arena.my_votes(users["owner"]).exists()


@pytest.mark.parametrize("fields, field", [
    ({"outcome": "a-wins"}, "outcome"),
    ({"outcome": "a", "prompt": "x" * 20_001}, "prompt"),
    ({"outcome": "a", "battle": "b" * 65}, "battle"),
])
def test_a_bad_vote_names_the_field_and_stores_nothing(users, pair, fields, field):
    with pytest.raises(RefusedInput) as refused:
        arena.record_vote(users["owner"], model_a=pair[0], model_b=pair[1], **fields)
    assert refused.value.field == field and not ArenaVote.objects.exists()


def test_a_version_cannot_battle_itself(users, pair):
    with pytest.raises(RefusedInput) as refused:
        arena.record_vote(users["owner"], model_a=pair[0], model_b=pair[0], outcome="a")
    assert refused.value.field == "model_b"


def test_an_outsider_cannot_vote_on_versions_they_may_not_see(users, pair, make_version):
    with pytest.raises(Http404):
        arena.record_vote(users["outsider"], model_a=pair[0], model_b=make_version(users["outsider"]), outcome="a")
    assert not ArenaVote.objects.exists()


def test_ratings_need_votes_and_are_queued_as_a_job_with_a_votes_file_under_evaluations(users, pair, settings):
    with pytest.raises(RefusedInput) as refused:
        arena.start_ratings(users["owner"])
    assert refused.value.field == "votes"
    arena.record_vote(users["owner"], model_a=pair[0], model_b=pair[1], outcome="b")
    job = arena.start_ratings(users["owner"])
    assert (job.kind, job.queue) == ("arena_ratings", "cpu")
    assert job.params["votes_path"].startswith(str(settings.EVALUATION_DIR / "arena") + "/")
    arena.write_votes(job)
    from pathlib import Path

    assert Path(job.params["votes_path"]).read_text() == f'{{"a": "{pair[0].pk}", "b": "{pair[1].pk}", "outcome": "b"}}\n'


def test_shown_ratings_keep_only_the_versions_the_user_may_see(users, pair, make_version):
    theirs = make_version(users["outsider"], "theirs")
    job = Job.objects.create(owner=users["owner"], kind="arena_ratings", params={})
    ids = [str(pair[0].pk), str(pair[1].pk), str(theirs.pk)]
    snapshot = ArenaRatingSnapshot.objects.create(job=job, votes=3, ratings=[
        {"version_id": int(i), "label": "x", "rating": 1000.0} for i in ids],
        win_rate={a: {b: 0.5 for b in ids if b != a} for a in ids})
    shown = arena.visible_ratings(users["teammate"], snapshot)
    assert [r["version_id"] for r in shown["ratings"]] == [pair[0].pk, pair[1].pk]
    assert set(shown["win_rate"]) == set(ids[:2]) and set(shown["win_rate"][ids[0]]) == {ids[1]}
    assert arena.latest_ratings(users["outsider"]) is None
