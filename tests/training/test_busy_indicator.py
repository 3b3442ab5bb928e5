"""Long htmx actions show that they are working: the pre-flight Check (tokenizer load and memory
estimate, seconds) and Render with a template (the dataset page, the same shared mechanism) name a
spinner (hx-indicator, shown by studio.css while the request runs), disable their buttons while it
runs (hx-disabled-elt: no double submit), and every page loads busy.js, which marks the button and
the region it fills aria-busy. The browser side is in tests/browser/test_training_pages.py."""
from html.parser import HTMLParser

import pytest
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db


class Elements(HTMLParser):
    """Every element's attributes, by id; and the ids of the elements inside each id'd element."""

    def __init__(self, page: str):
        super().__init__()
        self.by_id, self.inside, self.open = {}, {}, []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        attrs["tag"] = tag
        for ancestor in self.open:
            self.inside.setdefault(ancestor, []).append(attrs)
        if "id" in attrs:
            self.by_id[attrs["id"]] = attrs
        if tag not in ("input", "br", "img", "meta", "link", "hr"):
            self.open.append(attrs.get("id"))

    def handle_endtag(self, tag):
        if self.open:
            self.open.pop()


def assert_busy_wiring(page: str, element_id: str, disabled: set[str]):
    elements = Elements(page)
    source = elements.by_id[element_id]
    indicator_id = source["hx-indicator"].removeprefix("#")
    indicator = elements.by_id[indicator_id]
    assert "htmx-indicator" in indicator["class"].split() and indicator["role"] == "status"
    assert any("spinner" in e.get("class", "").split() for e in elements.inside[indicator_id])
    assert {part.strip() for part in source["hx-disabled-elt"].split(",")} == disabled


def test_the_check_button_names_a_spinner_and_disables_itself_and_start_training_while_it_runs(client, users):
    client.force_login(users["owner"])
    page = client.get("/training/new/").content.decode()
    assert_busy_wiring(page, "check-button", {"#check-button", "#submit-button"})
    assert "Checking: loading the tokenizer and estimating memory…" in page


def test_the_form_a_preset_swaps_in_keeps_the_busy_check_button(client, users):
    client.force_login(users["owner"])
    fragment = client.get("/training/new/?preset=builtin:sft-lora-small", HTTP_HX_REQUEST="true").content.decode()
    assert_busy_wiring(fragment, "check-button", {"#check-button", "#submit-button"})


def test_render_with_a_template_names_a_spinner_and_disables_its_button_while_it_runs(client, users, make_dataset):
    version = make_dataset(users["owner"])
    client.force_login(users["owner"])
    page = client.get(f"/datasets/versions/{version.pk}/").content.decode()
    assert_busy_wiring(page, "render-form", {"find button"})


def test_every_page_loads_the_busy_script_and_the_spinner_styles(client, users):
    client.force_login(users["owner"])
    page = client.get("/training/new/").content.decode()
    assert "/static/js/busy.js" in page and "/static/css/studio.css" in page
    script = open(finders.find("js/busy.js"), encoding="utf-8").read()
    assert "htmx:beforeRequest" in script and "htmx:afterRequest" in script and "aria-busy" in script
    styles = open(finders.find("css/studio.css"), encoding="utf-8").read()
    assert ".htmx-indicator { display:none; }" in styles and ".htmx-request.htmx-indicator" in styles
    assert "@keyframes spin" in styles
