"""Every field of every form in the studio has inline help: what it does, with its unit, default and
range where it has them (a newcomer never has to guess). Fields a form adds in its constructor count
too, so the forms are built as the pages build them; and the hand-written inputs of the pages (not
rendered from a form) carry a help line of their own."""
import importlib
import inspect
import re

import pytest
from django import forms

from tests.conftest import own_data_dir
from tests.training.conftest import make_dataset  # noqa: F401  (a fixture)

APPS = ["accounts", "datasets", "jobs", "leaderboards", "playground", "registry", "serving", "studio", "training"]

# What a form's constructor needs, by parameter name (a user-bound form gets the signed-in user).
CONSTRUCTOR_ARGUMENTS = {"user": lambda user: user, "benchmark_versions": lambda user: [],
                         "conversation_choices": lambda user: [("1", "a conversation")]}


def form_classes():
    for app in APPS:
        try:
            module = importlib.import_module(f"apps.{app}.forms")
        except ModuleNotFoundError:
            continue
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, forms.BaseForm) and cls.__module__ == module.__name__:
                yield f"{app}.{name}", cls


def build(cls, user, **options):
    """The form as a page builds it: required constructor arguments by name, `user=` when taken."""
    args, kwargs = [], dict(options)
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            args.append(CONSTRUCTOR_ARGUMENTS[parameter.name](user))
        elif parameter.name == "user":
            kwargs["user"] = user
    return cls(*args, **kwargs)


def without_help(form) -> list[str]:
    return [name for name, field in form.fields.items() if not str(field.help_text or "").strip()]


@pytest.mark.parametrize("name, cls", list(form_classes()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_form_field_has_inline_help(name, cls):
    assert [field for field, f in cls.base_fields.items() if not f.help_text] == [], name


@pytest.mark.django_db
@pytest.mark.parametrize("name, cls", list(form_classes()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_field_of_a_built_form_has_inline_help_including_those_added_by_its_constructor(name, cls, users):
    assert without_help(build(cls, users["owner"])) == [], name


@pytest.mark.django_db
def test_the_staff_only_key_limits_have_inline_help_too(users):
    from apps.serving.forms import KeyForm

    assert without_help(KeyForm(staff=True)) == []


# The training spec's defaults and the ranges its validation allows, as the help must state them.
TRAINING_NUMBERS = {
    "learning_rate": ("0.0002", "1e-9", "1"), "batch_size": ("8", "1", "4096"), "grad_accum": ("1", "1", "4096"),
    "max_steps": ("100", "0", "10,000,000"), "epochs": ("1", "0", "1000"), "max_length": ("1024", "16", "131,072"),
    "lora_r": ("16", "1", "1024"), "lora_alpha": ("32", "1", "4096"), "lora_dropout": ("0.05", "0", "0.9"),
    "save_every": ("50", "1", "10,000,000"), "eval_every": ("50", "1", "10,000,000"),
    "seed": ("42", "0", "2,147,483,647"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("field", sorted(TRAINING_NUMBERS))
def test_each_training_hyperparameter_help_names_its_default_and_its_range(field, users):
    from apps.training.forms import TrainingForm

    default, low, high = TRAINING_NUMBERS[field]
    help_text = str(TrainingForm(users["owner"]).fields[field].help_text)
    assert f"Default {default};" in help_text, help_text
    assert f"from {low} to {high}." in help_text, help_text


@pytest.mark.django_db
def test_each_training_hyperparameter_shows_its_default_as_placeholder_and_its_range_as_min_and_max(users):
    from apps.training.forms import TrainingForm

    form = TrainingForm(users["owner"])
    for field, (default, low, high) in TRAINING_NUMBERS.items():
        attrs = form.fields[field].widget.attrs
        assert (attrs["placeholder"], attrs["min"], attrs["max"]) == (f"default {default}", low, high.replace(",", "")), field


# ---- hand-written inputs on the pages -------------------------------------------------------

def help_line(page: str, input_name: str) -> str:
    """The text of the `<small>` help inside the label that holds the input named `input_name`."""
    for label in re.findall(r"<label\b.*?</label>", page, re.S):
        if re.search(rf'<(input|select|textarea)\b[^>]*\bname="{input_name}"', label):
            found = re.search(r'<small class="muted[^"]*"[^>]*>(.*?)</small>', label, re.S)
            assert found, f"no help line in the label of {input_name!r}: {label}"
            return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", found.group(1))).strip()
    raise AssertionError(f"no label holds an input named {input_name!r}")


@pytest.mark.django_db
def test_the_api_token_name_input_says_what_the_name_is_for_and_its_length(client, users):
    client.force_login(users["owner"])
    text = help_line(client.get("/accounts/tokens/").content.decode(), "name")
    assert "100 characters" in text and "tell your tokens apart" in text


@pytest.mark.django_db
def test_the_render_inputs_say_which_tokenizer_and_which_rows_with_default_and_range(client, users, tmp_path, settings,
                                                                                     monkeypatch, make_dataset):  # noqa: F811
    own_data_dir(tmp_path, settings, monkeypatch)
    version = make_dataset(users["owner"])
    client.force_login(users["owner"])
    page = client.get(f"/datasets/versions/{version.pk}/").content.decode()
    assert "chat template" in help_line(page, "tokenizer")
    assert f"from 1 to {version.rows}; default 1" in help_line(page, "row")


@pytest.mark.django_db
def test_the_preset_import_inputs_say_what_file_and_text_they_take(client, users):
    client.force_login(users["owner"])
    page = client.get("/training/presets/").content.decode()
    from apps.training.presets import MAX_YAML_BYTES

    assert f"up to {MAX_YAML_BYTES // 1024} KB" in help_line(page, "file")
    assert "Used when no file is chosen" in help_line(page, "yaml")
