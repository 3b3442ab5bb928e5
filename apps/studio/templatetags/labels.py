"""Filters for the English the pages show but do not write (apps/studio/labels.py):
`{{ text|core_text }}` for a string of the worker core, `{{ use.role|use_role }}` for what a job
does with a version it reads, `{{ benchmark.title|builtin_text }}` for a built-in object's text; and `{{ field.help_text|code_ticks }}`, help with its names as code."""
from django import template
from django.utils.html import conditional_escape
from django.utils.safestring import mark_safe

from apps.studio import labels

register = template.Library()

register.filter("core_text", labels.core_text)
register.filter("use_role", labels.use_role)
register.filter("metric_label", labels.metric_label)
register.filter("builtin_text", labels.builtin_text)
register.filter("choice_word", labels.choice_word)  # {{ deployment|choice_word:"state" }}


@register.filter(needs_autoescape=True)
def code_ticks(text, autoescape=True):
    """`text` (a field's help) escaped, with each `…` span in it shown as code: a field name, a
    format, a command, which a translation keeps as it is."""
    escape = conditional_escape if autoescape else str
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no span
        return escape(text)
    return mark_safe("".join(escape(part) if i % 2 == 0 else f"<code>{escape(part)}</code>" for i, part in enumerate(parts)))
