"""Every list a newcomer opens empty says what to do next and links to where to do it."""
import pytest

from tests.conftest import login_client

pytestmark = pytest.mark.django_db

EMPTY = {
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
