"""Radio buttons and checkboxes whose labels may name code: a `…` span in a label (a tool's name,
a field, a model id, as a translation keeps it) is shown as code, like a field's help
(templatetags/labels.py `code_ticks`). A <select>'s options cannot hold markup, so choices that
name code are offered with these."""
from django import forms

OPTION_TEMPLATE = "studio/widgets/code_option.html"


class CodeRadioSelect(forms.RadioSelect):
    option_template_name = OPTION_TEMPLATE


class CodeCheckboxSelectMultiple(forms.CheckboxSelectMultiple):
    option_template_name = OPTION_TEMPLATE
