"""Dry run beside Check: Check only validates, and says so when Dry run is ticked."""
import pytest

from apps.jobs.models import Job
from tests.training.test_form_and_api import form_data  # noqa: F401  (the shared form fixture)

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("ticked", [True, False])
def test_check_says_what_a_ticked_dry_run_will_do_and_runs_nothing(client, users, form_data, fake_preflight, ticked):  # noqa: F811
    client.force_login(users["owner"])
    extra = {"dry_run": "on"} if ticked else {}
    page = client.post("/training/new/", form_data(action="check", **extra), HTTP_HX_REQUEST="true").content.decode()
    assert ('id="preflight-dry-run-note"' in page) is ticked
    if ticked:
        assert "Check only validates" in page and "registers nothing" in page
    assert not Job.objects.exists()
