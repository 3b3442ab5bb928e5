"""A template filter that shows job results without server paths or secrets (see
workers.tasks.catalog.public_value): `{{ job.result|public_value }}`. Parameters are made public
in the views (catalog.public_params)."""
from django import template

from workers.tasks.catalog import public_value as _public_value

register = template.Library()


@register.filter
def public_value(value):
    return _public_value(value)
