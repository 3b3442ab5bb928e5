"""Markdown of untrusted text (model output, user messages) into HTML a page may mark safe.

Two layers: markdown-it-py's CommonMark parser with raw HTML disabled (a `<script>` in the text
is escaped and shows as text; its link check refuses javascript:/vbscript:/data: URLs), then
nh3 (ammonia) with a small allowlist of tags and attributes, so a parser bug cannot produce an
event handler, a script or a style. No images: an image URL in a reply is fetched by the
reader's browser (a prompt-injected answer could leak the conversation through one), so an
image shows as its link text. Links get rel="noopener noreferrer nofollow".

`render_markdown` is the only HTML the playground's pages and events may mark safe."""
from __future__ import annotations

import re

import nh3
from markdown_it import MarkdownIt

MAX_RENDER_CHARS = 200_000  # longer text is cut (with a note) before parsing: parsing is linear but not free

TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "del", "code", "pre", "blockquote",
        "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td"}
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "code": {"class"}, "th": {"style"}, "td": {"style"}}
URL_SCHEMES = {"http", "https", "mailto"}
_LANGUAGE_CLASS = re.compile(r"^language-[A-Za-z0-9_+#.\-]{1,30}$")
_ALIGN = re.compile(r"^text-align:(left|right|center)$")


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    if attribute == "class":  # fenced code's language (for highlighting), nothing else
        return value if tag == "code" and _LANGUAGE_CLASS.match(value) else None
    if attribute == "style":  # table column alignment, as markdown-it writes it
        return value if _ALIGN.match(value.replace(" ", "")) else None
    return value


_parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]).disable("image")
_cleaner = nh3.Cleaner(tags=TAGS, attributes=ATTRIBUTES, attribute_filter=_attribute_filter, url_schemes=URL_SCHEMES,
                       link_rel="noopener noreferrer nofollow", strip_comments=True)


def render_markdown(text: str) -> str:
    """Sanitised HTML of `text` (Markdown); safe to insert into a page as is."""
    text = text or ""
    note = ""
    if len(text) > MAX_RENDER_CHARS:
        text, note = text[:MAX_RENDER_CHARS], f"\n\n*(shown up to {MAX_RENDER_CHARS:,} characters)*"
    return _cleaner.clean(_parser.render(text + note))
