"""Template filters that show job parameters and results without server paths or secrets
(see workers.tasks.catalog.public_params): `{{ job|public_params }}`, `{{ job.result|public_value }}`."""
from django import template

from workers.tasks.catalog import public_params as _public_params
from workers.tasks.catalog import public_value as _public_value

register = template.Library()


@register.filter
def public_params(job) -> dict:
    return _public_params(job.kind, job.params)


@register.filter
def public_value(value):
    return _public_value(value)
