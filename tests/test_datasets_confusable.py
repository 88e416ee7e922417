"""``make_confusable_classification``: shapes, seeding, and the promised group structure."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from kdpipe.datasets import make_confusable_classification


def test_shapes_dtypes_balance_and_groups():
    X, y, groups = make_confusable_classification(
        n_samples=1003,
        n_classes=50,
        group_size=10,
        n_features=7,
        random_state=0,
        return_groups=True,
    )
    assert X.shape == (1003, 7) and X.dtype == np.float32
    assert y.shape == (1003,) and y.dtype == np.int64
    counts = np.bincount(y, minlength=50)
    assert counts.min() == 20 and counts.max() == 21  # as even as possible
    assert groups.shape == (50,)
    np.testing.assert_array_equal(np.bincount(groups), [10] * 5)
    assert not np.array_equal(groups, np.arange(50) // 10)  # groups not readable from labels


def test_same_seed_same_data_other_seed_other_data():
    a = make_confusable_classification(n_samples=200, n_classes=20, random_state=3)
    b = make_confusable_classification(n_samples=200, n_classes=20, random_state=3)
    c = make_confusable_classification(n_samples=200, n_classes=20, random_state=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_n_groups_and_uneven_sizes():
    *_, groups = make_confusable_classification(
        n_samples=100, n_classes=23, n_groups=4, random_state=0, return_groups=True
    )
    assert sorted(np.bincount(groups).tolist()) == [5, 6, 6, 6]


def test_errors_are_confused_within_groups_not_across():
    X, y, groups = make_confusable_classification(
        n_samples=6000, n_classes=60, group_size=6, random_state=1, return_groups=True
    )
    predicted = LinearDiscriminantAnalysis().fit(X[:4000], y[:4000]).predict(X[4000:])
    wrong = predicted != y[4000:]
    assert 0.1 < wrong.mean() < 0.8  # confusable, but learnable
    same_group = groups[predicted[wrong]] == groups[y[4000:][wrong]]
    assert same_group.mean() > 0.95


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_groups": 3, "group_size": 4}, "not both"),
        ({"n_classes": 5, "group_size": 6}, "group_size=6 is larger than n_classes=5"),
        ({"n_classes": 5, "n_groups": 6}, "n_groups=6 is larger"),
        ({"n_samples": 0}, "n_samples must be an integer >= 1, got 0"),
        ({"class_separation": -1.0}, "class_separation must be a finite number >= 0"),
        ({"n_classes": 1}, "n_classes must be an integer >= 2"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_confusable_classification(**kwargs)
