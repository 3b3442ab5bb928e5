"""A clone of the repository alone passes the suite: tests read the excerpts in
tests/fixtures/data, never a data folder a machine keeps beside the checkout. The guard in
tests/env_plugin.py fails any test that reads under a folder named by PUYU_TESTS_FORBIDDEN_DIRS
(`.ci/run` names the one CI keeps), even a test that catches the error."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import env_plugin
from tests.env_plugin import ForbiddenRead, take_violations
from tests.fixtures.data import DATA

REPO = Path(__file__).resolve().parents[1]


def test_the_guard_refuses_opening_listing_globbing_and_a_child_process_under_a_forbidden_folder(tmp_path, monkeypatch):
    forbidden = tmp_path / "outside" / "data"
    (forbidden / "gsm8k").mkdir(parents=True)  # glob lists only folders that exist
    monkeypatch.setattr(env_plugin, "FORBIDDEN_DIRS", [str(tmp_path / "outside")])
    target = forbidden / "gsm8k" / "test.jsonl"  # refused whether or not it exists
    monkeypatch.chdir(tmp_path)
    attempts = [lambda: open(target, "rb"), lambda: target.read_text(), lambda: open("outside/data/x", "rb"),
                lambda: os.listdir(target.parent), lambda: list(os.scandir(tmp_path / "outside")),
                lambda: list(Path(".").glob("outside/*")), lambda: subprocess.run(["cat", str(target)], check=False)]
    for attempt in attempts:
        with pytest.raises(ForbiddenRead, match=r"not in a clone of the repository .*; use a small excerpt in tests/fixtures"):
            attempt()
    refused = take_violations()  # forgotten, so that this test itself passes
    assert len(refused) == len(attempts) and refused[0] == f"open {target}"
    open(DATA / "gsm8k" / "test.jsonl", "rb").close()  # the excerpts, and paths that merely look alike, are fine
    (tmp_path / "outside-not").mkdir()
    (tmp_path / "outside-not" / "x").write_text("x")
    open(tmp_path / "outside-not" / "x", "rb").close()
    assert take_violations() == []


def test_a_test_that_catches_the_guards_error_still_fails(tmp_path):
    outside = tmp_path / "outside"
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "test_sneaky.py").write_text(
        "from pathlib import Path\n"
        f"OUTSIDE = Path({str(outside)!r})\n"
        "def test_falls_back_quietly():\n"
        "    try:\n"
        "        (OUTSIDE / 'data' / 'gsm8k' / 'test.jsonl').read_text()\n"
        "    except Exception:\n"
        "        pass\n"
        "def test_honest():\n"
        "    assert True\n")
    (tmp_path / "suite" / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PUYU_TESTS_FORBIDDEN_DIRS": str(outside)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.env_plugin", "-p", "no:django",
                           "-p", "no:cacheprovider", "-c", str(tmp_path / "suite" / "pytest.ini"), str(tmp_path / "suite")],
                          cwd=tmp_path / "suite", env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 failed, 1 passed" in done.stdout
    assert "test_falls_back_quietly read outside the clone" in done.stdout and "Use an excerpt in tests/fixtures/data" in done.stdout


def test_every_excerpt_folder_says_its_source_and_licence_and_all_stay_small():
    folders = [p for p in DATA.iterdir() if p.is_dir() and p.name != "__pycache__" and any(p.iterdir())]
    assert {p.name for p in folders} >= {"gsm8k", "humaneval", "mmlu", "wikitext2", "tinyshakespeare",
                                         "tang_poetry_zh", "llamafactory_demo", "belle", "alpaca_seed"}
    for folder in folders:
        source = (folder / "SOURCE.txt").read_text(encoding="utf-8")
        assert "license:" in source and ("repo:" in source or "source:" in source) and "kept:" in source, folder.name
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 1_000_000, f"the excerpts weigh {total:,} bytes: keep only the records the tests need"
