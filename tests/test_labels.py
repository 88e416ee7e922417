"""One label rule at both entry points, build_cache and DistilledClassifier.fit: every
label kind gives the same codes, -1 and "-1" mark unlabeled rows, unknown labels fail."""

from __future__ import annotations

import numpy as np
import pytest

import kdpipe.distilled
from kdpipe import DistilledClassifier
from kdpipe.cache import build_cache
from kdpipe.errors import ClassMismatchError

FAST = dict(hidden_layer_sizes=(4,), max_epochs=1, batch_size=8, random_state=0, device="cpu")
U = -1  # expected code of an unlabeled row

# name: (y, classes in logit order, expected codes written from the rule)
CASES = {
    "ints": ([0, 2, 1, 2], [0, 1, 2], [0, 2, 1, 2]),
    "ints with -1": ([0, -1, 2, -1], [0, 1, 2], [0, U, 2, U]),
    "strings": (["cat", "eel", "dog", "cat"], ["cat", "dog", "eel"], [0, 2, 1, 0]),
    "object strings with the int -1": (
        np.array(["cat", -1, "dog", "eel"], dtype=object),
        ["cat", "dog", "eel"],
        [0, U, 1, 2],
    ),
    "numpy strings with '-1'": (
        np.asarray(["cat", -1, "dog", -1]),
        ["cat", "dog", "eel"],
        [0, U, 1, U],
    ),
    "floats": ([0.0, 2.0, -1.0, 1.0], [0, 1, 2], [0, 2, U, 1]),
    "a class the transfer set lacks": (
        ["dog", "dog", "cat", -1],
        ["cat", "dog", "eel"],
        [1, 1, 0, U],
    ),
}


class ZeroTeacher:
    """Logits of zeros for three classes (picklable, fingerprintable)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), 3), dtype=np.float32)


def _X(n: int) -> np.ndarray:
    return np.arange(n * 2, dtype=np.float32).reshape(n, 2)


def _fit_codes(monkeypatch, y, classes) -> np.ndarray:
    seen = {}
    source = kdpipe.distilled.MinibatchSource

    def spy(X, codes, teacher_logits, **options):
        seen["codes"] = codes
        return source(X, codes, teacher_logits, **options)

    monkeypatch.setattr(kdpipe.distilled, "MinibatchSource", spy)
    logits = np.zeros((len(y), len(classes)), dtype=np.float32)
    clf = DistilledClassifier(classes=classes, **FAST).fit(_X(len(y)), y, teacher_logits=logits)
    assert clf.classes_.tolist() == list(classes)
    return seen["codes"]


@pytest.mark.parametrize("case", list(CASES))
def test_build_cache_and_fit_encode_every_label_kind_alike(tmp_path, monkeypatch, case):
    y, classes, expected = CASES[case]
    cache = build_cache(
        ZeroTeacher(),
        _X(len(y)),
        tmp_path / "c",
        y=y,
        classes=classes,
        chunk_rows=2,
        progress=False,
        device="cpu",
    )
    assert cache.labels.tolist() == expected
    assert cache.classes.tolist() == list(classes)
    assert _fit_codes(monkeypatch, y, classes).tolist() == expected


@pytest.mark.parametrize("y", [[0, 3, 1, 2], ["cat", "fox", "dog", "cat"], [0.5, 1.0, 2.0, 0.0]])
def test_a_label_that_is_no_class_is_an_error_naming_it_at_both_entry_points(tmp_path, y):
    classes = ["cat", "dog", "eel"] if isinstance(y[0], str) else [0, 1, 2]
    bad = next(v for v in y if v not in classes)
    with pytest.raises(ClassMismatchError, match=f"label {bad!r}"):
        build_cache(
            ZeroTeacher(),
            _X(4),
            tmp_path / "c",
            y=y,
            classes=classes,
            chunk_rows=2,
            progress=False,
            device="cpu",
        )
    with pytest.raises(ClassMismatchError, match=f"label {bad!r}"):
        DistilledClassifier(classes=classes, **FAST).fit(
            _X(4), y, teacher_logits=np.zeros((4, 3), dtype=np.float32)
        )


def test_minus_one_cannot_be_a_class_where_it_marks_unlabeled_rows(tmp_path):
    with pytest.raises(ClassMismatchError, match="-1"):
        build_cache(
            ZeroTeacher(),
            _X(4),
            tmp_path / "c",
            y=[0, -1, 1, 1],
            classes=[-1, 0, 1],
            chunk_rows=2,
            progress=False,
            device="cpu",
        )
    with pytest.raises(ClassMismatchError, match="-1"):
        DistilledClassifier(classes=[-1, 0, 1], **FAST).fit(
            _X(4), [0, -1, 1, 1], teacher_logits=np.zeros((4, 3), dtype=np.float32)
        )
    # without teacher logits -1 is an ordinary class
    clf = DistilledClassifier(**FAST).fit(_X(4), [0, -1, 1, 1])
    assert clf.classes_.tolist() == [-1, 0, 1]
