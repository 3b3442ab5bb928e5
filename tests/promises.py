"""The fault and security promises as one table. A test that proves a promise carries
`@pytest.mark.promise("scenario")` and may record a figure with the `promise_figure` fixture
(e.g. "resumed at step 6, losses equal within 3e-7"); at the end of the run pytest prints

    scenario | result | figure

for every promise collected, so a reader sees what was proven and by how much. Several tests may
prove one scenario: its result is "pass" only if all of them passed."""
from __future__ import annotations

import pytest

_RESULTS: dict[str, dict] = {}
_FIGURES_KEY = pytest.StashKey[list]()


def pytest_configure(config):
    config.addinivalue_line("markers", "promise(scenario): this test proves one of the fault or security promises")


@pytest.fixture
def promise_figure(request):
    """Call with a short text to show in the figure column of the promise table."""
    figures = request.node.stash.setdefault(_FIGURES_KEY, [])
    return figures.append


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    for marker in item.iter_markers("promise"):  # one test may prove several promises
        scenario = str(marker.args[0])
        entry = _RESULTS.setdefault(scenario, {"result": "pass", "figures": [], "tests": 0})
        if report.when == "call" or (report.when == "setup" and not report.passed):
            entry["tests"] += 1
            if report.failed:
                entry["result"] = "FAIL"
            elif report.skipped and entry["result"] == "pass":
                entry["result"] = "skipped"
        if report.when == "teardown":
            entry["figures"].extend(item.stash.get(_FIGURES_KEY, []))
            if report.failed:
                entry["result"] = "FAIL"


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    rows = [(scenario, e["result"], "; ".join(e["figures"]) or "-") for scenario, e in sorted(_RESULTS.items())]
    width = max(len(r[0]) for r in rows)
    terminalreporter.section("fault and security promises")
    terminalreporter.write_line(f"{'scenario'.ljust(width)} | result  | figure")
    terminalreporter.write_line(f"{'-' * width}-|---------|-------")
    for scenario, result, figure in rows:
        terminalreporter.write_line(f"{scenario.ljust(width)} | {result.ljust(7)} | {figure}")
    passed = sum(1 for r in rows if r[1] == "pass")
    terminalreporter.write_line(f"{passed} of {len(rows)} promises hold")
