"""The new-run form states the training spec's own numbers: its placeholders and help show the
TrainSpec defaults (never a guess, never nothing), and the ranges it states are exactly the ones the
spec's validation enforces."""
import dataclasses

import pytest

from apps.training import forms
from workers.core import paths
from workers.core.training.spec import TrainSpec
from workers.tasks import catalog


def validate(**fields):
    """The spec's validation with server-made paths (inside the data dir; they need not exist)."""
    models, checkpoints = paths.subtree(paths.MODELS), paths.subtree(paths.CHECKPOINTS)
    spec = {"base_model_dir": str(models / "base"), "train_files": [str(paths.subtree(paths.DATASETS) / "data.jsonl")],
            "output_dir": str(models / "out"), "checkpoint_dir": str(checkpoints / "run"), **fields}
    return catalog.validate_params("train", spec)


def beyond(value, direction: int):
    """The next value past a bound: one for whole numbers, a little for fractions."""
    if isinstance(value, int):
        return value + direction
    return value / 2 if direction < 0 and value > 0 else value + direction * max(abs(value), 1) * 0.01


def test_the_form_defaults_are_the_spec_defaults_without_building_a_spec():
    spec_defaults = {f.name: f.default for f in dataclasses.fields(TrainSpec)}
    assert {name: forms.spec_defaults()[name] for name in forms.MAIN_FIELDS} == {name: spec_defaults[name]
                                                                                 for name in forms.MAIN_FIELDS}


def test_every_main_hyperparameter_has_a_stated_range():
    assert set(forms.MAIN_FIELDS) == set(forms.FIELD_HELP) and set(forms.MAIN_FIELDS) <= set(forms.spec_ranges())


@pytest.mark.parametrize("field", sorted(forms.MAIN_FIELDS))
def test_the_range_the_form_states_is_the_one_the_spec_enforces(field):
    low, high = forms.spec_ranges()[field]
    validate(**{field: low})
    validate(**{field: high})
    for outside in (beyond(low, -1), beyond(high, +1)):
        with pytest.raises(catalog.InvalidParams) as refused:
            validate(**{field: outside})
        assert refused.value.field == field, (outside, refused.value)


@pytest.mark.parametrize("value, text", [(2e-4, "0.0002"), (1e-9, "1e-9"), (1.0, "1"), (0.05, "0.05"), (4096, "4096"),
                                         (131_072, "131,072"), (2**31 - 1, "2,147,483,647")])
def test_numbers_are_shown_short_and_grouped_past_ten_thousand(value, text):
    assert forms.shown(value) == text
