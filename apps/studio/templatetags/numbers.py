"""`{{ value|metric }}`: a measured number as a person writes it. A count stays a count
("7,900", not "7900.0000", even when JSON made it a float); a fraction keeps four significant
digits ("0.2315", "1.234e-05"); anything else is shown as it is."""
from django import template
from django.contrib.humanize.templatetags.humanize import intcomma

register = template.Library()


@register.filter
def metric(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, int) or value.is_integer():
        return intcomma(int(value))
    return f"{value:.4g}"
