"""Every field of every form in the studio has inline help: what it does, with its unit, default and
range where it has them (a newcomer never has to guess)."""
import importlib
import inspect

import pytest
from django import forms

APPS = ["accounts", "datasets", "jobs", "leaderboards", "playground", "registry", "serving", "studio", "training"]


def form_classes():
    for app in APPS:
        try:
            module = importlib.import_module(f"apps.{app}.forms")
        except ModuleNotFoundError:
            continue
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, forms.BaseForm) and cls.__module__ == module.__name__:
                yield f"{app}.{name}", cls


@pytest.mark.parametrize("name, cls", list(form_classes()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_form_field_has_inline_help(name, cls):
    assert [field for field, f in cls.base_fields.items() if not f.help_text] == [], name
