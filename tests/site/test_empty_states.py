"""Every list a newcomer opens empty says what to do next and links to where to do it."""
import pytest

from tests.conftest import login_client, own_data_dir

pytestmark = pytest.mark.django_db

EMPTY = {
    "/": ("No jobs yet", 'href="/start/"'),  # the dashboard's recent jobs
    "/jobs/": ('No jobs yet', 'href="/start/"'),
    "/datasets/": ("No datasets yet", 'href="/datasets/upload/"'),
    "/models/": ("No model matches", 'href="/models/import/"'),
    "/training/": ("No training runs yet", 'href="/training/new/"'),
    "/deployments/": ("No deployments yet", 'href="/deployments/new/"'),
    "/deployments/usage/": ("No usage yet", 'href="/deployments/keys/"'),
    "/playground/": ("No conversations yet", "New chat"),
}


@pytest.mark.parametrize("path", sorted(EMPTY))
def test_an_empty_list_says_what_to_do_and_links_there(client, users, path):
    login_client(client, users["outsider"])
    page = client.get(path).content.decode()
    text, link = EMPTY[path]
    assert text in page, path
    start = page.index(text)
    assert link in page[start:start + 700], f"{path}: no way forward next to the empty state"


@pytest.mark.parametrize("who", ["outsider", "staff"])
def test_an_empty_storage_page_says_what_to_store_first_and_links_there(client, users, make_user, tmp_path, settings,
                                                                         monkeypatch, who):
    data = own_data_dir(tmp_path, settings, monkeypatch)  # nothing on disk: no user and no unattributed bytes
    settings.JOB_LOG_DIR = data / "logs"  # not the session's, which earlier tests' jobs filled
    login_client(client, make_user("admin", is_staff=True) if who == "staff" else users[who])
    page = client.get("/storage/").content.decode()
    start = page.index("You store nothing yet")
    assert 'href="/datasets/upload/"' in page[start:start + 400] and 'href="/models/import/"' in page[start:start + 400]
