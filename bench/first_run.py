"""First run: seconds from `make run` to the first streamed token of a playground chat with the
starter model. Run: flock /tmp/puyu-cpu.lock .venv/bin/python bench/first_run.py [--cold]

With the warm .venv, each case starts the platform as `make run` does (`python -m
puyu_site.launcher`: embedded Redis, migrate, admin, built-in benchmarks, the starter
import and its deployment, daphne, the workers, beat) on a data dir in a temp folder and a free
port. Chromium (the system one, through Playwright; started before the clock, as a user's browser
is already open) polls the log-in page until daphne answers, logs in as the admin, opens the
Playground until it offers the starter deployment, starts a chat (temperature 0, 16 tokens), sends
a message, and the clock stops when the first characters of the answer appear in the page. Then
the launcher is stopped (SIGTERM, as Ctrl-C) and the case ends.

Cases: `fresh` (a new data dir; the converted starter already in the machine's cache, which the
first case fills when empty), `used` (the same data dir started again), and with --cold `cold`
(a new data dir and PUYU_STARTER_CACHE pointing at an empty folder: the GGUF conversion is paid,
as on the very first `make run`). Targets: fresh <= 60 s, cold <= 90 s, used <= 20 s.
Baseline, measured in the same run: `python -c "import torch, transformers, django"` in a fresh
process (what every studio process pays before doing anything). Each figure is printed with its
ratio to that baseline and the phases of its clock (web up, logged in, starter offered, first token).
Nothing asserts (the machine is shared); one JSON line ends the output.

Measured here, 2 quiet cores, 2026-12-04 (baseline import 2.2-2.4 s; seconds from `make run`):
                   fresh        used        cold
  before (096f75a)  25.3        17.5          -     web answering 11.9 / 10.4
  staged start      20.7, 22.1  13.5, 17.3  44.7    web answering 9.1-11.2 / 6.0-8.5
(the staged start: web, serve and control workers and beat first, the others once the web answers;
a ready replica reconciles its deployment itself; the starter's import queued before the built-in
benchmarks). Used case, where the rest goes: start-up steps 3 s, the serve worker ready 5 s after
its spawn, the replica's torch import and SmolLM2 load 5 s, the browser's log-in and polling.
Earlier, with other helpers' jobs on the same two cores:
                 fresh   used   cold    (baseline import 3.5-4.7 s)
  HEAD launcher   64.0   49.3     -     start-up steps (4 manage.py processes) 16.7 s of the used case
  one-process     64.1   37.7   122.7   start-up steps (Redis + 1 process, checks once) 6.3 s
Used case after, by phase: migrate (make setup) 4.0, launcher steps done 10.3, daphne answering
23.3 (13 s: it imports while six worker processes import torch on the same two cores), logged in
24.7, the Playground offers the starter 36.6 (the serve worker's start-up, SmolLM2's load and the
reconcile that marks it ready), first token 37.7. Fresh: the starter import job (copying the
converted model) and the replica make up 62 s; cold adds the GGUF conversion (~60 s here).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from puyu_site.redis_server import free_port  # noqa: E402
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.stack import wait_for  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")
PASSWORD = "bench-first-run-password"
TARGETS = {"fresh": 60.0, "used": 20.0, "cold": 90.0}
PROMPT = "Hello! What can you do?"
CASE_TIMEOUT_S = 600.0


def baseline_import_s() -> float:
    started = time.perf_counter()
    subprocess.run([PYTHON, "-c", "import torch, transformers, django"], check=True, cwd=ROOT)
    return time.perf_counter() - started


class Platform:
    """`make run` on one data dir: the launcher in its own session (it migrates), its output in
    <data dir>/launcher.log."""

    def __init__(self, data_dir: Path, port: int, starter_cache: Path | None, launcher: list[str]) -> None:
        self.data_dir, self.port, self.launcher = data_dir, port, launcher
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "PUYU_STARTER")}
        self.env.update(PUYU_DATA_DIR=str(data_dir), PUYU_PORT=str(port), DJANGO_SUPERUSER_USERNAME="admin",
                        DJANGO_SUPERUSER_PASSWORD=PASSWORD)
        if launcher[0] != "-m":
            self.env["PYTHONPATH"] = str(ROOT)  # a launcher script elsewhere still imports puyu_site
        if starter_cache is not None:
            self.env["PUYU_STARTER_CACHE"] = str(starter_cache)
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "launcher.log"
        self.log_offset = log_path.stat().st_size if log_path.exists() else 0  # the used case appends
        log = open(log_path, "ab")
        self.proc = subprocess.Popen([PYTHON, *self.launcher], cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # the launcher stops its children in order
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def watch_log(self, started: float, phases: dict) -> threading.Thread:
        """Note when the launcher's milestones appear in its log (seconds from `started`)."""
        milestones = {"[puyu] started web": "launcher_steps_done", "Puyu Studio is up": "launcher_up"}

        def follow():
            path = self.data_dir / "launcher.log"
            offset = self.log_offset
            while self.proc is not None and self.proc.poll() is None and len(phases) < 64:
                text = path.read_text(errors="replace")[offset:] if path.exists() else ""
                for needle, name in milestones.items():
                    if needle in text and name not in phases:
                        phases[name] = round(time.monotonic() - started, 2)
                if all(name in phases for name in milestones.values()):
                    return
                time.sleep(0.05)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        return thread

    def log_tail(self) -> str:
        path = self.data_dir / "launcher.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def log_in(page, url: str, username: str, password: str) -> None:
    """The log-in form, filled and sent as a user does (opened unless the page shows it already)."""
    if "/accounts/login/" not in page.url:
        page.goto(url + "/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("main form button[type=submit]")
    page.wait_for_url(lambda address: "/accounts/login/" not in address)


def offered_starter(page, url: str) -> dict | None:
    """The Playground's new-chat choice of the starter deployment ({value, label, selected}), or
    None while the Playground does not offer it."""
    page.goto(url + "/playground/")
    return page.evaluate("""() => {
        const select = document.getElementById('id_deployment');
        const option = select && [...select.options].find(o => /starter/.test(o.textContent));
        return option ? {value: option.value, label: option.textContent.trim(), selected: option.selected} : null;
    }""")


def start_chat(page, deployment: str, max_tokens: int) -> int:
    """On the Playground's page: a new greedy chat with `deployment`; returns the conversation's id
    once its page is open (and its websocket opening)."""
    page.select_option("#id_deployment", deployment)
    page.fill("#new-chat-form #id_temperature", "0")
    page.fill("#new-chat-form #id_max_tokens", str(max_tokens))
    page.click("#new-chat-submit")
    page.wait_for_url(lambda u: "/playground/c/" in u)
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


def send(page, text: str) -> None:
    """Type a message into the chat's composer and press Enter, as a user does."""
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def first_token(page, platform: Platform) -> dict:
    """Start the platform and drive the browser to the first token; the phases in seconds from
    the start."""
    url = f"http://127.0.0.1:{platform.port}"
    started = time.monotonic()
    phases = {}

    def mark(name: str) -> None:
        phases[name] = round(time.monotonic() - started, 2)

    platform.start()
    platform.watch_log(started, phases)

    def login_page():
        try:
            return page.goto(url + "/accounts/login/", timeout=2000).status == 200
        except Exception:  # noqa: BLE001  (connection refused until daphne listens)
            time.sleep(0.2)
            return False

    wait_for(login_page, CASE_TIMEOUT_S, message="the log-in page")
    mark("web_up")
    log_in(page, url, "admin", PASSWORD)
    mark("logged_in")

    def starter_offered():
        starter = offered_starter(page, url)
        if not starter:
            time.sleep(0.5)
        return starter

    deployment = wait_for(starter_offered, CASE_TIMEOUT_S, message="the Playground to offer the starter deployment")
    mark("starter_offered")
    start_chat(page, deployment["value"], 16)
    send(page, PROMPT)
    mark("sent")
    wait_for(lambda: page.evaluate(
        "(Array.from(document.querySelectorAll('#thread article.msg.assistant .msg-body')).pop()?.textContent.trim().length || 0)"),
        CASE_TIMEOUT_S, 0.02, "the first token of the answer")
    mark("first_token")
    return phases


def run_case(browser, name: str, platform: Platform) -> dict:
    context = browser.new_context()
    page = context.new_page()
    try:
        phases = first_token(page, platform)
    except Exception:
        print(platform.log_tail(), file=sys.stderr)
        raise
    finally:
        context.close()
        platform.stop()
    print(f"{name}: first token after {phases['first_token']:.1f} s (target <= {TARGETS[name]:.0f} s); "
          f"phases {phases}", flush=True)
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also the very first run: an empty starter cache")
    parser.add_argument("--launcher-script", type=Path,
                        help="time this launcher script instead of `-m puyu_site.launcher` (e.g. an older version "
                             "saved with `git show REV:puyu_site/launcher.py`, its BASE_DIR set to this checkout), "
                             "for before/after figures")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="puyu-first-run-"))
    results = {}
    try:
        baseline = baseline_import_s()
        print(f"baseline: import torch, transformers, django in a fresh process: {baseline:.1f} s", flush=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            cases = [("fresh", root / "fresh", None), ("used", root / "fresh", None)]
            if args.cold:
                cases.append(("cold", root / "cold", root / "empty-starter-cache"))
            for name, data_dir, cache in cases:
                launcher = [str(args.launcher_script)] if args.launcher_script else ["-m", "puyu_site.launcher"]
                results[name] = run_case(browser, name, Platform(data_dir, free_port(), cache, launcher))
            browser.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"{'case':<6} {'first token':>12} {'target':>8} {'÷ baseline':>11}")
    for name, phases in results.items():
        seconds = phases["first_token"]
        print(f"{name:<6} {seconds:>10.1f} s {TARGETS[name]:>6.0f} s {seconds / baseline:>10.1f}x")
    print(json.dumps({"baseline_import_s": round(baseline, 2), **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
