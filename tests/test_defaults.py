"""Defaults live in one place: TrainingConfig's fields; the estimator's signature reads
them and its docstring states the same values."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re

import pytest

from kdpipe import DistilledClassifier
from kdpipe.engine import TrainingConfig


def _documented_defaults(cls: type) -> dict[str, str]:
    section = cls.__doc__.split("Parameters\n    ----------\n", 1)[1].split("\n    Attributes", 1)[
        0
    ]
    return dict(
        re.findall(r"^    (\w+) : [^\n]*?default=([^\n]+?)\s*$", section, flags=re.MULTILINE)
    )


def test_the_estimator_reads_its_training_defaults_from_training_config():
    signature = inspect.signature(DistilledClassifier).parameters
    shared = [f for f in dataclasses.fields(TrainingConfig) if f.name in signature]
    assert len(shared) >= 14
    for field in shared:
        assert signature[field.name].default == field.default, field.name


@pytest.mark.parametrize("name", list(inspect.signature(DistilledClassifier).parameters))
def test_the_docstring_states_each_default_of_the_signature(name):
    documented = _documented_defaults(DistilledClassifier)
    assert name in documented, f"{name}: no 'default=' in the docstring"
    default = inspect.signature(DistilledClassifier).parameters[name].default
    assert ast.literal_eval(documented[name]) == default, name


def test_device_defaults_to_auto():
    assert DistilledClassifier().device == TrainingConfig().device == "auto"
