"""Blind battles: two deployments serving different versions answer anonymously; the vote becomes a
Leaderboards arena vote and only then are the names shown."""
import pytest

from apps.leaderboards.models import ArenaVote
from apps.playground import arena, services
from apps.playground.models import Battle


def finish_both(battle: Battle) -> None:
    for column, reply in enumerate(arena.answers(battle)):
        services.finish_turn(reply.pk, status="done", content=f"answer {column}")


@pytest.fixture
def two_models(users, make_deployment):
    owner = users["owner"]
    return make_deployment(owner, "alpha", "alpha"), make_deployment(owner, "beta", "beta")


def test_a_battle_hides_the_models_until_the_vote_which_records_an_arena_vote_and_reveals_them(
        users, two_models, api):
    owner = users["owner"]
    battle = arena.start_battle(owner, content="Write a haiku about tea")
    assert {battle.deployment_a, battle.deployment_b} == set(two_models)
    assert battle.version_a != battle.version_b
    shown = api(owner, "get", f"/api/playground/battles/{battle.pk}").json()
    assert shown["revealed"] is False and "models" not in shown
    assert [a["label"] for a in shown["answers"]] == ["A", "B"]
    assert all(a["deployment"] is None and a["model_version"] is None for a in shown["answers"])
    conversation = api(owner, "get", f"/api/playground/conversations/{battle.conversation_id}").json()
    assert conversation["deployment"] is None and conversation["deployment_id"] is None
    exported = api(owner, "get", f"/api/playground/conversations/{battle.conversation_id}/export?fmt=json").json()
    assert not any(m["deployment"] or m["model_version"] for m in exported["messages"])
    assert "alpha" not in api(owner, "get", f"/api/playground/conversations/{battle.conversation_id}/export?fmt=md").content.decode()

    early = api(owner, "post", f"/api/playground/battles/{battle.pk}/vote", {"outcome": "a"})
    assert early.status_code == 422 and "both answers" in early.json()["detail"]
    finish_both(battle)
    assert api(users["teammate"], "post", f"/api/playground/battles/{battle.pk}/vote", {"outcome": "b"}).status_code == 403
    voted = api(owner, "post", f"/api/playground/battles/{battle.pk}/vote", {"outcome": "a"})
    assert voted.status_code == 200, voted.content
    body = voted.json()
    assert body["revealed"] is True and body["outcome"] == "a"
    assert body["models"]["A"]["deployment"] == battle.deployment_a.served_name
    assert body["answers"][0]["deployment"] == battle.deployment_a.served_name
    vote = ArenaVote.objects.get()
    assert (vote.voter, vote.model_a, vote.model_b, vote.outcome, vote.battle, vote.prompt) == (
        owner, battle.version_a, battle.version_b, "a", str(battle.pk), "Write a haiku about tea")
    again = api(owner, "post", f"/api/playground/battles/{battle.pk}/vote", {"outcome": "tie"})
    assert again.status_code == 422 and ArenaVote.objects.count() == 1
    assert api(users["outsider"], "get", f"/api/playground/battles/{battle.pk}").status_code == 404


def test_a_battle_needs_two_different_model_versions_the_user_may_use(users, make_deployment):
    owner = users["owner"]
    first = make_deployment(owner, "solo", "solo")
    with pytest.raises(services.RefusedInput) as refused:
        arena.start_battle(owner, content="hi")
    assert refused.value.field == "deployments"
    # the same version deployed twice is still one contestant
    services.serving.create_deployment(owner, name="solo-2", model=first.model, version=first.version)
    from apps.serving.models import Deployment

    Deployment.objects.filter(name="solo-2").update(state="ready")
    with pytest.raises(services.RefusedInput):
        arena.start_battle(owner, content="hi")
    with pytest.raises(services.RefusedInput):  # an outsider may use none of them
        arena.start_battle(users["outsider"], content="hi")
    assert not Battle.objects.exists()


def test_the_pair_is_random_among_different_versions(users, two_models, make_deployment):
    pairs = arena.candidates(users["owner"])
    seen = {tuple(sorted((a[0].name, b[0].name))) for a, b in (arena.pick_pair(pairs) for _ in range(30))}
    assert seen == {("alpha", "beta")}
    make_deployment(users["owner"], "gamma", "gamma")
    orders = {(a[0].name, b[0].name) for a, b in (arena.pick_pair(arena.candidates(users["owner"])) for _ in range(60))}
    assert len(orders) >= 4  # every model can be A or B
