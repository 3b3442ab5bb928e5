"""The `arena_ratings` job: Bradley–Terry ratings of the arena's votes with bootstrap intervals,
vote counts and the win-rate matrix (statistics.bradley_terry). The studio writes the votes to a
JSONL file under evaluations/ (one {"a", "b", "outcome"} per line, a and b being model labels) and
stores the result; the command line takes any such file:

    python -m workers.core arena_ratings --set votes_path=evaluations/arena/votes.jsonl
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from workers.core import paths
from workers.core.reporting import Reporter, check_cancelled
from workers.core.specs import SpecError, require_range, short

MAX_VOTES = 1_000_000
MAX_LINE = 4096


@dataclass
class ArenaRatingsSpec:
    votes_path: str = ""
    n_resamples: int = 200
    seed: int = 0

    def validate(self) -> None:
        paths.readable("votes_path", self.votes_path, paths.EVALUATIONS)
        require_range("n_resamples", self.n_resamples, 10, 2000)
        require_range("seed", self.seed, 0, 2**32 - 1)


def read_votes(path: Path) -> list[tuple[str, str, str]]:
    """The votes of a JSONL file, bounded in count and line length; a bad line is a SpecError
    naming its line number."""
    votes = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if number > MAX_VOTES:
                raise SpecError("votes_path", f"holds more than {MAX_VOTES:,} votes")
            if len(line) > MAX_LINE:
                raise SpecError("votes_path", f"line {number}: longer than {MAX_LINE} characters")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                votes.append((row["a"], row["b"], row["outcome"]))
            except (ValueError, KeyError, TypeError):
                raise SpecError("votes_path", f"line {number}: expected {{\"a\", \"b\", \"outcome\"}}, got {short(line.strip())}") from None
    return votes


def run_arena_ratings(spec: ArenaRatingsSpec, reporter: Reporter) -> dict:
    from workers.core.evaluation.statistics import bradley_terry

    votes = read_votes(Path(spec.votes_path))
    reporter.progress(0.1, f"{len(votes)} votes")
    check_cancelled(reporter)
    try:
        ratings = bradley_terry(votes, n_resamples=spec.n_resamples, seed=spec.seed)
    except ValueError as exc:  # a vote with a bad outcome or a self-battle names its line
        raise SpecError("votes_path", str(exc)) from None
    reporter.progress(1.0, f"{len(ratings.ratings)} models rated")
    return {"votes": len(votes), **asdict(ratings)}
