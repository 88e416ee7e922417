"""DistilledClassifier: distillation, labels, errors, bias correction, params, streaming."""

from __future__ import annotations

import doctest
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split

import kdpipe.distilled
from kdpipe import DistilledClassifier
from kdpipe.errors import ClassMismatchError, InputError, TeacherOutputError

FAST = dict(hidden_layer_sizes=(16,), learning_rate=1e-2, max_epochs=8, device="cpu")


def blobs(n: int, seed: int, n_classes: int = 5, d: int = 10, spread: float = 1.6):
    """Gaussian classes around fixed centers (the same for every seed)."""
    centers = np.random.default_rng(123).normal(size=(n_classes, d)) * 1.5
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    X = centers[y] + rng.normal(size=(n, d)) * spread
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def teacher():
    X, y = blobs(5000, 1)
    return LogisticRegression(max_iter=1000).fit(X, y)


@pytest.fixture(scope="module")
def small(teacher):
    """300 rows of a 5-class problem with the teacher's logits."""
    X, y = blobs(300, 7)
    return X, y, teacher.decision_function(X).astype(np.float32)


def test_docstring_example():
    result = doctest.testmod(kdpipe.distilled, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_distilled_student_beats_hard_label_student(teacher, seed):
    # 40 labeled rows + 1960 unlabeled transfer rows: the teacher's soft targets carry
    # what 40 labels cannot (teacher ~0.87, hard-label student ~0.75 on this problem)
    X, y = blobs(2000, 10 + seed)
    X_test, y_test = blobs(2000, 2)
    labeled = np.full(len(y), -1)
    labeled[:40] = y[:40]
    common = dict(hidden_layer_sizes=(32,), learning_rate=1e-2, random_state=seed, device="cpu")
    hard = DistilledClassifier(max_epochs=100, **common).fit(X[:40], y[:40])
    distilled = DistilledClassifier(max_epochs=15, temperature=2.0, **common)
    distilled.fit(X, labeled, teacher_logits=teacher.decision_function(X))
    assert distilled.score(X_test, y_test) > hard.score(X_test, y_test) + 0.05
    assert distilled.score(X_test, y_test) > teacher.score(X_test, y_test) - 0.03


@pytest.mark.parametrize("seed", [0, 1])
def test_bias_correction_recovers_a_class_missing_from_the_transfer_set(seed):
    # section 3 on sklearn's 8x8 digits: a confident teacher knows every digit, the
    # transfer set has no 3s, so the student's bias for 3 ends up far too low
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_tr, X_rest, y_tr, y_rest = train_test_split(X, y, train_size=1000, random_state=0, stratify=y)
    X_held, X_te, y_held, y_te = train_test_split(
        X_rest, y_rest, train_size=300, random_state=0, stratify=y_rest
    )
    teacher = LogisticRegression(C=100.0, max_iter=5000).fit(X_tr, y_tr)
    logits = teacher.decision_function(X_tr)
    keep = y_tr != 3
    student = DistilledClassifier(
        hidden_layer_sizes=(64,),
        learning_rate=1e-2,
        max_epochs=30,
        temperature=2.0,
        alpha=0.0,
        classes=list(range(10)),
        random_state=seed,
        device="cpu",
    ).fit(X_tr[keep], y_tr[keep], teacher_logits=logits[keep])
    assert list(student.classes_) == list(range(10))
    threes = y_te == 3
    before = np.mean(student.predict(X_te[threes]) == 3)
    score_before = student.score(X_te, y_te)
    student.fit_class_offsets(X_held, y_held, classes=[3])
    after = np.mean(student.predict(X_te[threes]) == 3)
    assert before < 0.4
    assert after > 0.7 and after > before + 0.4
    assert student.score(X_te, y_te) > score_before
    assert student.class_offsets_[3] > 1.0
    assert np.count_nonzero(student.class_offsets_) == 1  # only the chosen class moved


def test_class_offsets_parameter_shifts_predictions(small):
    X, y, V = small
    base = DistilledClassifier(random_state=0, **FAST).fit(X, y, teacher_logits=V)
    shifted = clone(base).set_params(class_offsets={2: 100.0}).fit(X, y, teacher_logits=V)
    assert np.all(shifted.predict(X) == 2)
    assert shifted.class_offsets_.tolist() == [0.0, 0.0, 100.0, 0.0, 0.0]
    np.testing.assert_allclose(
        shifted.decision_function(X) - shifted.class_offsets_, base.decision_function(X), rtol=1e-6
    )
    proba = shifted.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    with pytest.raises(ClassMismatchError):
        clone(base).set_params(class_offsets={"nope": 1.0}).fit(X, y, teacher_logits=V)


def test_fit_class_offsets_log_loss_and_errors(small):
    X, y, V = small
    clf = DistilledClassifier(random_state=0, **FAST).fit(X, y, teacher_logits=V)
    clf.fit_class_offsets(X, y, metric="log_loss")
    assert clf.class_offsets_.shape == (5,)
    with pytest.raises(ClassMismatchError):
        clf.fit_class_offsets(X, y, classes=[7])
    with pytest.raises(ValueError, match="metric"):
        clf.fit_class_offsets(X, y, metric="f1")


def test_same_seed_same_predictions_other_seed_differs(small):
    X, y, V = small
    a = DistilledClassifier(random_state=3, dropout=0.2, **FAST).fit(X, y, teacher_logits=V)
    b = DistilledClassifier(random_state=3, dropout=0.2, **FAST).fit(X, y, teacher_logits=V)
    c = DistilledClassifier(random_state=4, dropout=0.2, **FAST).fit(X, y, teacher_logits=V)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))
    assert [r["train_loss"] for r in a.history_] == [r["train_loss"] for r in b.history_]


def test_string_labels_unlabeled_rows_and_ensemble_logits(small):
    X, y, V = small
    names = np.array(["ant", "bee", "cat", "dog", "eel"], dtype=object)
    labels = names[y].copy()
    labels[::2] = -1  # half the rows unlabeled
    ensemble = np.stack([V, V + np.float32(0.5)], axis=1)  # (n, M=2, C)
    clf = DistilledClassifier(random_state=0, **FAST).fit(X, labels, teacher_logits=ensemble)
    assert clf.classes_.tolist() == names.tolist()
    assert set(clf.predict(X)) <= set(names)
    assert clf.score(X, names[y]) > 0.7
    # score skips unlabeled rows: the same as scoring the labeled rows alone
    assert clf.score(X, labels) == clf.score(X[1::2], labels[1::2])


def test_unlabeled_only_transfer_set_needs_classes(small):
    X, y, V = small
    clf = DistilledClassifier(random_state=0, classes=[0, 1, 2, 3, 4], **{**FAST, "max_epochs": 30})
    clf.fit(X, None, teacher_logits=V)
    assert np.mean(clf.predict(X) == V.argmax(axis=1)) > 0.8
    with pytest.raises(InputError, match="classes"):
        DistilledClassifier(**FAST).fit(X, np.full(len(y), -1), teacher_logits=V)


def test_minus_one_is_a_class_without_teacher_only(small):
    X, y, V = small
    y_minus = np.where(y == 0, -1, y)
    clf = DistilledClassifier(random_state=0, **FAST).fit(X, y_minus)
    assert clf.classes_.tolist() == [-1, 1, 2, 3, 4]
    assert -1 in set(clf.predict(X))
    with pytest.raises(InputError, match="unlabeled"):
        DistilledClassifier(classes=[-1, 1, 2, 3, 4], **FAST).fit(X, y_minus, teacher_logits=V)


def test_class_and_shape_mismatches_are_clear_errors(small):
    X, y, V = small
    clf = DistilledClassifier(**FAST)
    with pytest.raises(ClassMismatchError, match="classes="):  # y lacks class 4, logits have 5
        clf.fit(X[y != 4], y[y != 4], teacher_logits=V[y != 4])
    with pytest.raises(ClassMismatchError, match=r"label 9 of y"):  # a label the classes lack
        DistilledClassifier(classes=[0, 1, 2, 3, 4], **FAST).fit(
            X, np.where(y == 4, 9, y), teacher_logits=V
        )
    with pytest.raises(InputError, match="rows"):
        clf.fit(X, y, teacher_logits=V[:-1])
    with pytest.raises(InputError, match=r"\(n, C\)"):
        clf.fit(X, y, teacher_logits=V[:, :, None, None])


def test_nan_teacher_logits_name_the_rows(small):
    X, y, V = small
    bad = V.copy()
    bad[[5, 17]] = np.nan
    with pytest.raises(TeacherOutputError, match=r"rows \[5, 17\]"):
        DistilledClassifier(**FAST).fit(X, y, teacher_logits=bad)


def test_params_clone_pickle_and_module_routing(small):
    X, y, V = small
    clf = DistilledClassifier(module=TinyNet, module_params={"hidden": 8}, random_state=0, **FAST)
    params = clf.get_params()
    assert params["module__hidden"] == 8 and "module__hidden" not in clf.get_params(deep=False)
    twin = clone(clf).set_params(module__hidden=4, temperature=3.0)
    assert twin.module_params == {"hidden": 4} and clf.module_params == {"hidden": 8}
    twin.fit(X, y, teacher_logits=V)
    assert twin.module_.body[0].out_features == 4
    restored = pickle.loads(pickle.dumps(twin))
    np.testing.assert_array_equal(restored.predict_proba(X), twin.predict_proba(X))
    assert all(p.device.type == "cpu" for p in restored.module_.parameters())
    with pytest.raises(InputError, match="TinyNet"):
        clone(clf).set_params(module__depth=3).fit(X, y, teacher_logits=V)


def test_grid_search_tunes_module_params(small):
    X, y, V = small
    search = GridSearchCV(
        DistilledClassifier(module=TinyNet, random_state=0, **FAST),
        {"module__hidden": [2, 16]},
        cv=2,
    )
    search.fit(X, y, teacher_logits=V)
    assert search.best_params_ == {"module__hidden": 16}
    assert search.best_estimator_.module_.body[0].out_features == 16


def test_history_verbose_and_warm_start(small, capsys):
    X, y, V = small
    clf = DistilledClassifier(
        random_state=0, verbose=2, early_stopping=True, n_iter_no_change=50, warm_start=True, **FAST
    )
    clf.fit(X, y, teacher_logits=V)
    assert len(clf.history_) == FAST["max_epochs"] == clf.n_iter_
    assert all(np.isfinite(r["val_loss"]) and 0 <= r["val_accuracy"] <= 1 for r in clf.history_)
    assert capsys.readouterr().out.count("epoch") == FAST["max_epochs"]
    first = clf.module_
    clf.fit(X, y, teacher_logits=V)
    assert clf.module_ is first and len(clf.history_) == 2 * FAST["max_epochs"]
    assert [r["epoch"] for r in clf.history_] == list(range(1, 2 * FAST["max_epochs"] + 1))
    assert clf.history_[-1]["train_loss"] < clf.history_[0]["train_loss"]
    with pytest.raises(InputError, match="warm_start"):
        clf.fit(X[y < 4], y[y < 4])


class FixedInitNet(torch.nn.Module):
    """Linear-ReLU-Linear whose initial weights come from numpy, not from torch's seed."""

    def __init__(self, n_features: int, n_classes: int, hidden: int = 8):
        super().__init__()
        rng = np.random.default_rng(42)
        self.hidden = torch.nn.Linear(n_features, hidden)
        self.out = torch.nn.Linear(hidden, n_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.from_numpy(rng.normal(scale=0.3, size=tuple(p.shape))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, features) -> (batch, classes)
        return self.out(torch.relu(self.hidden(x)))


def test_hard_label_only_training_matches_the_baseline_objective(small):
    # Without teacher logits the student minimizes plain cross-entropy with the labels.
    # Reference: the same network and Adam, full-batch steps (so row order cannot
    # matter) on torch.nn.functional.cross_entropy, written here independently.
    X, y, _ = small
    epochs, lr = 12, 1e-2
    clf = DistilledClassifier(
        module=FixedInitNet,
        optimizer="adam",
        learning_rate=lr,
        batch_size=len(X),
        max_epochs=epochs,
        random_state=0,
        device="cpu",
    ).fit(X, y)

    net = FixedInitNet(X.shape[1], 5)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    inputs, targets = torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]  # the reference does learn

    np.testing.assert_allclose([r["train_loss"] for r in clf.history_], losses, rtol=1e-5)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(clf.module_.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        log_q = torch.log_softmax(net(inputs), dim=1).double().numpy()
    np.testing.assert_allclose(clf.predict_log_proba(X), log_q, rtol=1e-4, atol=1e-5)


class TinyNet(torch.nn.Module):
    """A user's own student: one hidden layer of ``hidden`` units."""

    def __init__(self, n_features: int, n_classes: int, hidden: int = 8):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, features) -> (batch, classes)
        return self.body(x)
