"""A model card's lineage graph carries each version's latest evaluation."""
from __future__ import annotations

from apps.registry.lineage import lineage_nodes


def test_the_lineage_graph_shows_each_versions_latest_score_to_those_who_may_see_it(
        users, make_version, make_benchmark, make_suite, finished_run):
    owner, outsider = users["owner"], users["outsider"]
    base = make_version(owner)
    child = make_version(owner, kind="merged", parent=base)
    suite = make_suite(owner, [make_benchmark(owner)], name="core")
    finished_run(owner, suite, base, {suite.items.get().benchmark_version: [True, False, False, False]})
    nodes, _ = lineage_nodes(child, owner)
    assert "core 25.0%" in nodes[f"v{base.pk}"][0]
    assert "%" not in nodes[f"v{child.pk}"][0]  # not evaluated: nothing made up
    # the teammate sees the score; the outsider's view of their own graph cannot include it
    assert "core 25.0%" in lineage_nodes(child, users["teammate"])[0][f"v{base.pk}"][0]
    from apps.registry.lineage import evaluation_lines

    assert evaluation_lines([base.pk], outsider) == {}
