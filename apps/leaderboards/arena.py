"""The arena: blind pairwise votes on model versions, and Bradley–Terry ratings computed by a job
(never in a request). A ratings job rates the votes on versions its owner may see; the votes are
written to a JSONL file under EVALUATION_DIR/arena/ when the job runs (labels = version ids), and
the snapshot maps the ids back to readable labels. A tie is half a win to each side; "both bad"
is counted and shown but not rated (workers/core/evaluation/statistics.py)."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext

from apps.accounts.visibility import get_visible_or_404, teammate_ids, visible_to
from apps.jobs import services as jobs
from apps.jobs.models import Job, JobStatus
from apps.leaderboards.models import ArenaOutcome, ArenaRatingSnapshot, ArenaVote
from apps.leaderboards.services import RefusedInput
from apps.registry.models import ModelVersion

MAX_PROMPT = 20_000


def record_vote(user, *, model_a, model_b, outcome, prompt="", battle="") -> ArenaVote:
    """One battle's vote; both versions must be ones the voter may see."""
    versions = ModelVersion.objects.select_related("model")
    a = get_visible_or_404(versions, user, "model__owner", pk=getattr(model_a, "pk", None))
    b = get_visible_or_404(versions, user, "model__owner", pk=getattr(model_b, "pk", None))
    if a.pk == b.pk:
        raise RefusedInput("model_b", gettext("must be another version than model_a (a model cannot battle itself)"))
    if outcome not in ArenaOutcome.values:
        raise RefusedInput("outcome", gettext("must be one of %(values)s, got %(outcome)s")
                                              % {"values": ', '.join(ArenaOutcome.values),
                                                 "outcome": repr(str(outcome)[:40])})
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
        raise RefusedInput("prompt", gettext("must be text of at most %(max)s characters")
                                             % {"max": format(MAX_PROMPT, ",")})
    if not isinstance(battle, str) or len(battle) > 64:
        raise RefusedInput("battle", gettext("must be at most 64 characters"))
    return ArenaVote.objects.create(voter=user, model_a=a, model_b=b, outcome=outcome, prompt=prompt, battle=battle)


def my_votes(user):
    return ArenaVote.objects.filter(voter=user).select_related("model_a__model", "model_b__model")


def rated_votes(user):
    """The votes a ratings job of `user` rates: those on two versions `user` may see."""
    votes = ArenaVote.objects.all()
    if user.is_superuser:
        return votes
    team = teammate_ids(user)
    return votes.filter(model_a__model__owner__in=team, model_b__model__owner__in=team)


def start_ratings(user) -> Job:
    """Queue a ratings job (the one already queued or running, if there is one)."""
    active = Job.objects.filter(owner=user, kind="arena_ratings", status__in=(JobStatus.QUEUED, JobStatus.RUNNING)).first()
    if active is not None:
        return active
    if not rated_votes(user).exists():
        raise RefusedInput("votes", gettext("there are no votes on versions you may see yet"))
    path = settings.EVALUATION_DIR / "arena" / f"{uuid.uuid4().hex}.jsonl"
    return jobs.submit_job(user, "arena_ratings", {"votes_path": str(path)}, title="Arena ratings")


def write_votes(job: Job) -> int:
    """Write the votes the job rates to its votes file (atomically); returns how many."""
    path = Path(job.params["votes_path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    count = 0
    with open(partial, "w", encoding="utf-8") as fh:
        for a, b, outcome in rated_votes(job.owner).order_by("id").values_list("model_a_id", "model_b_id", "outcome").iterator():
            fh.write(json.dumps({"a": str(a), "b": str(b), "outcome": outcome}) + "\n")
            count += 1
    os.replace(partial, path)
    return count


def record_ratings(job: Job, result: dict) -> dict:
    """In the job's SUCCEEDED transaction: the snapshot, with version ids mapped back to labels."""
    snapshot = ArenaRatingSnapshot.objects.filter(job=job).first()
    if snapshot is None:
        ids = {int(r["model"]) for r in result.get("ratings") or []}
        labels = {v.pk: str(v) for v in ModelVersion.objects.select_related("model").filter(pk__in=ids)}
        ratings = [{"version_id": int(r["model"]), "label": labels.get(int(r["model"]), f"version {r['model']}"),
                    **{k: r.get(k) for k in ("rating", "low", "high", "votes", "wins", "losses", "ties", "both_bad")}}
                   for r in result.get("ratings") or []]
        snapshot = ArenaRatingSnapshot.objects.create(job=job, votes=result.get("votes", 0), ratings=ratings,
                                                      win_rate=result.get("win_rate") or {})
    return {"votes": snapshot.votes, "models": len(snapshot.ratings), "battles": result.get("battles")}


def latest_ratings(user) -> ArenaRatingSnapshot | None:
    """The newest snapshot of a ratings job the user may see (their own or a teammate's)."""
    return visible_to(ArenaRatingSnapshot.objects.select_related("job"), user, "job__owner").first()


def visible_ratings(user, snapshot: ArenaRatingSnapshot) -> dict:
    """A snapshot as `user` may see it: only the versions they may see (ratings and heatmap)."""
    ids = {r["version_id"] for r in snapshot.ratings}
    seen = set(visible_to(ModelVersion.objects.filter(pk__in=ids), user, "model__owner").values_list("pk", flat=True))
    keep = {str(i) for i in seen}
    return {"job_id": snapshot.job_id, "created_at": snapshot.created_at, "votes": snapshot.votes,
            "ratings": [r for r in snapshot.ratings if r["version_id"] in seen],
            "win_rate": {a: {b: share for b, share in row.items() if b in keep}
                         for a, row in snapshot.win_rate.items() if a in keep}}
