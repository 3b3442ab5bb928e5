"""Small things a newcomer reads: the language pie names its slices and has a legend; a finished
training run that made no samples does not say "No samples yet"."""
import pytest
from django.template.loader import render_to_string

from apps.datasets.charts import stats_charts


def test_the_language_pie_names_each_language_and_shows_a_legend():
    html = stats_charts({"languages": {"en": 30, "zh": 10, "xx": 1}})["languages"]
    assert '"showlegend":true' in html.replace(" ", "")
    assert "English" in html and "Chinese" in html and '"xx"' in html and "label+percent" in html


class _Job:
    def __init__(self, finished, status):
        self.is_finished, self.status = finished, status


@pytest.mark.parametrize("finished, status, text", [
    (False, "RUNNING", "No samples yet"),
    (True, "SUCCEEDED", "This run made no samples (it ended before its first sampling step"),
    (True, "FAILED", "This run made no samples."),
])
def test_the_samples_panel_says_whether_samples_may_still_come(finished, status, text):
    html = render_to_string("training/_samples.html", {"samples": [], "job": _Job(finished, status)})
    assert text in html
