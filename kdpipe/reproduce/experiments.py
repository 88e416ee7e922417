"""The paper's experiments, each a function of a :class:`~kdpipe.reproduce.lab.Lab`.

Each returns a plain dict (JSON-able): the paper's result, the criterion for
"reproduced" (fixed before any number is seen), the exact settings, every measured
number per seed, and the verdict. Choices are made on the validation rows; the test
rows are scored once per final model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kdpipe.reproduce.data import _stratified_order
from kdpipe.reproduce.lab import Lab
from kdpipe.reproduce.stats import (
    NOT,
    PARTLY,
    REPRODUCED,
    UNDETERMINED,
    beats_verdict,
    mean_se,
    share_verdict,
)

__all__ = ["RUNNERS", "distilled_student", "choose_alpha"]


def _acc(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(X) == y))


def _summary(values: list[float]) -> dict[str, Any]:
    mean, se = mean_se(values)
    return {"per_seed": [float(v) for v in values], "mean": mean, "se": se}


def _share(value: float, base: float, top: float) -> float:
    """How much of the gap from ``base`` to ``top`` ``value`` closes (nan without a gap)."""
    return (value - base) / (top - base) if top > base else math.nan


def _judge(lab: Lab, verdict: str) -> str | None:
    return verdict if lab.profile.verdicts else None


def choose_alpha(lab: Lab) -> float:
    """The hard-label weight of the big student at the paper's T, chosen on validation rows.

    Each candidate is fitted with seed 0; the fitted students are kept for reuse.
    """
    if "alpha" not in lab.choices:
        p, s = lab.profile, lab.splits
        scores = {}
        for alpha in p.alphas:
            model = lab.fit(
                lab.student(
                    p.student_hidden,
                    p.student_epochs,
                    0,
                    temperature=p.exp1_temperature,
                    alpha=alpha,
                ),
                teacher="big",
            )
            lab.models[(f"distilled alpha={alpha}", 0)] = model
            scores[alpha] = _acc(model, s.X_val, s.y_val)
        lab.choices["alpha"] = max(scores, key=lambda a: scores[a])  # ties: the first listed
        lab.choices["alpha_val_accuracy"] = {str(a): v for a, v in scores.items()}
    return lab.choices["alpha"]


def distilled_student(lab: Lab, seed: int) -> Any:
    """The big student distilled from the big teacher at the paper's T (shared by #1, #3)."""
    p = lab.profile
    alpha = choose_alpha(lab)
    key = (f"distilled alpha={alpha}", seed)
    if key not in lab.models:
        lab.models[key] = lab.fit(
            lab.student(
                p.student_hidden,
                p.student_epochs,
                seed,
                temperature=p.exp1_temperature,
                alpha=alpha,
            ),
            teacher="big",
        )
    return lab.models[key]


def hard_student(lab: Lab, hidden: tuple[int, ...], epochs: int, seed: int) -> Any:
    key = (f"hard {hidden} {epochs}", seed)
    if key not in lab.models:
        lab.models[key] = lab.fit(lab.student(hidden, epochs, seed))
    return lab.models[key]


def experiment_1(lab: Lab) -> dict[str, Any]:
    """A 2x800 student distilled at T=20 from the 2x1200 teacher, against hard labels."""
    p, s = lab.profile, lab.splits
    teacher = lab.big_teacher()
    alpha = choose_alpha(lab)
    hard, distilled, closed = [], [], []
    for seed in range(p.seeds):
        h = _acc(hard_student(lab, p.student_hidden, p.student_epochs, seed), s.X_test, s.y_test)
        d = _acc(distilled_student(lab, seed), s.X_test, s.y_test)
        hard.append(h)
        distilled.append(d)
        closed.append(_share(d, h, teacher.test_accuracy))
    gap = _summary(closed)
    n_test = len(s.y_test)
    return {
        "title": "A big regularized teacher distilled into a smaller student at T=20 (section 3)",
        "paper": "MNIST: teacher 2x1200 (dropout, 2-pixel jitter) 67 test errors; 2x800 student on "
        "hard labels 146 errors, distilled at T=20 74 errors: 91% of the gap closed.",
        "criterion": "The distilled student closes at least 80% of the gap between the hard-label "
        "student and the teacher (reproduced when mean - 2 SE >= 0.8; partly when "
        "mean - 2 SE > 0; otherwise not).",
        "settings": {
            "teacher": f"{len(teacher.members)} x MLP{p.teacher_hidden}, dropout {p.teacher_dropout}, "
            f"{p.teacher_epochs} epochs, {p.jitter_copies} copies jittered by <= {p.jitter_pixels} px",
            "student": f"MLP{p.student_hidden}, {p.student_epochs} epochs, Adam lr {p.learning_rate}, "
            f"batch {p.batch_size}",
            "temperature": p.exp1_temperature,
            "alpha": alpha,
            "alpha_val_accuracy": lab.choices["alpha_val_accuracy"],
        },
        "results": {
            "teacher_test_accuracy": teacher.test_accuracy,
            "teacher_test_errors": round((1 - teacher.test_accuracy) * n_test),
            "hard_test_accuracy": _summary(hard),
            "distilled_test_accuracy": _summary(distilled),
            "hard_test_errors_mean": (1 - float(np.mean(hard))) * n_test,
            "distilled_test_errors_mean": (1 - float(np.mean(distilled))) * n_test,
            "gap_closed": gap,
        },
        "headline": (
            f"gap closed {gap['mean']:.0%} (paper 91%)"
            if not math.isnan(gap["mean"])
            else f"no gap to close: teacher {teacher.test_accuracy:.4f}, hard-label student "
            f"{np.mean(hard):.4f}; distilled {np.mean(distilled):.4f}"
        ),
        "verdict": _judge(lab, share_verdict(gap["mean"], gap["se"], 0.8)),
    }


def experiment_2(lab: Lab) -> dict[str, Any]:
    """A 2x30 student's accuracy against the temperature."""
    p, s = lab.profile, lab.splits
    teacher = lab.big_teacher()
    temps = list(p.temperatures)
    val = np.empty((p.seeds, len(temps)))
    test = np.empty((p.seeds, len(temps)))
    hard = []
    for seed in range(p.seeds):
        hard.append(
            _acc(hard_student(lab, p.small_hidden, p.small_epochs, seed), s.X_test, s.y_test)
        )
        for j, T in enumerate(temps):
            model = lab.fit(
                lab.student(
                    p.small_hidden, p.small_epochs, seed, temperature=T, alpha=p.small_alpha
                ),
                teacher="big",
            )
            val[seed, j] = _acc(model, s.X_val, s.y_val)
            test[seed, j] = _acc(model, s.X_test, s.y_test)
    softness = _teacher_softness(teacher.test_logits, temps)
    results: dict[str, Any] = {
        "teacher_test_accuracy": teacher.test_accuracy,
        "teacher_top_probability": softness["top_probability"],
        "teacher_entropy_nats": softness["entropy"],
        "hard_test_accuracy": _summary(hard),
        "temperatures": temps,
        "val_accuracy": [_summary(list(val[:, j])) for j in range(len(temps))],
        "test_accuracy": [_summary(list(test[:, j])) for j in range(len(temps))],
    }
    verdict = NOT
    headline = "fewer than 3 temperatures: no intermediate one"
    if len(temps) >= 3:
        inner = 1 + int(np.argmax(val[:, 1:-1].mean(0)))  # chosen on validation
        low = _summary(list(test[:, inner] - test[:, 0]))
        high = _summary(list(test[:, inner] - test[:, -1]))
        results.update(chosen_temperature=temps[inner], beats_lowest=low, beats_highest=high)
        verdict = beats_verdict([(low["mean"], low["se"]), (high["mean"], high["se"])])
        headline = (
            f"T={temps[inner]:g} (chosen on validation) vs T={temps[0]:g}: "
            f"{low['mean']:+.4f}, vs T={temps[-1]:g}: {high['mean']:+.4f}"
        )
    return {
        "title": "A tiny student's accuracy against the temperature (section 3)",
        "paper": "MNIST, 2x30 student: temperatures of 2.5 to 4 worked best; higher and lower ones "
        "were worse.",
        "criterion": "The intermediate temperature with the best validation accuracy beats both the "
        "lowest and the highest temperature on test, each paired difference over seeds "
        "beyond 2 SE (reproduced: both; partly: one; not: neither).",
        "settings": {
            "student": f"MLP{p.small_hidden}, {p.small_epochs} epochs, Adam lr {p.learning_rate}, "
            f"batch {p.batch_size}",
            "alpha": p.small_alpha,
            "temperatures": temps,
        },
        "results": results,
        "notes": [
            (
                f"How soft the targets are: at T={temps[0]:g} the teacher's mean top probability on "
                f"test rows is {softness['top_probability'][0]:.3f} (entropy "
                f"{softness['entropy'][0]:.3f} nats); at T={temps[-1]:g} it is "
                f"{softness['top_probability'][-1]:.3f}. The paper's MNIST teacher made 67 errors in "
                "10,000, so its T=1 targets were close to one-hot and a higher T was needed to show the "
                "small logits; a teacher that is already unsure at T=1 gives dark knowledge at T=1, and "
                "the best T moves down."
            ),
        ],
        "headline": headline,
        "verdict": _judge(lab, verdict),
    }


def _teacher_softness(logits: np.ndarray, temperatures: list[float]) -> dict[str, list[float]]:
    """Mean top probability and entropy of the combined teacher at each temperature."""
    from scipy.special import log_softmax

    top, entropy = [], []
    for T in temperatures:
        log_p = log_softmax(logits.astype(np.float64) / T, axis=-1)  # (n, members, classes)
        proba = np.exp(log_p).mean(axis=1)
        top.append(float(proba.max(axis=1).mean()))
        entropy.append(float(-(proba * np.log(np.clip(proba, 1e-300, None))).sum(axis=1).mean()))
    return {"top_probability": top, "entropy": entropy}


def experiment_3(lab: Lab) -> dict[str, Any]:
    """A class left out of the transfer set, then its logit offset fitted on validation rows."""
    p, s = lab.profile, lab.splits
    lab.big_teacher()
    c = p.left_out_class
    alpha = choose_alpha(lab)
    keep = np.flatnonzero(s.y_train != c)
    in_class = s.y_test == c
    ref_c, before_c, after_c, before, after, shift, recovered = [], [], [], [], [], [], []
    for seed in range(p.seeds):
        reference = distilled_student(lab, seed)
        ref_c.append(_acc(reference, s.X_test[in_class], s.y_test[in_class]))
        model = lab.fit(
            lab.student(
                p.student_hidden,
                p.student_epochs,
                seed,
                temperature=p.exp1_temperature,
                alpha=alpha,
            ),
            keep,
            teacher="big",
        )
        before_c.append(_acc(model, s.X_test[in_class], s.y_test[in_class]))
        before.append(_acc(model, s.X_test, s.y_test))
        model.fit_class_offsets(s.X_val, s.y_val, classes=[c])
        shift.append(float(model.class_offsets_[c]))
        after_c.append(_acc(model, s.X_test[in_class], s.y_test[in_class]))
        after.append(_acc(model, s.X_test, s.y_test))
        recovered.append(after_c[-1] / ref_c[-1] if ref_c[-1] > 0 else math.nan)
    pair = [int(k) for k in p.kept_classes]
    only_pair = np.flatnonzero(np.isin(s.y_train, pair))
    pair_before, pair_after, pair_shifts = [], [], []
    for seed in range(p.seeds):
        model = lab.fit(
            lab.student(
                p.student_hidden,
                p.student_epochs,
                seed,
                temperature=p.exp1_temperature,
                alpha=alpha,
            ),
            only_pair,
            teacher="big",
        )
        pair_before.append(_acc(model, s.X_test, s.y_test))
        model.fit_class_offsets(s.X_val, s.y_val, classes=pair)
        pair_shifts.append([float(model.class_offsets_[k]) for k in pair])
        pair_after.append(_acc(model, s.X_test, s.y_test))
    pair_gain = _summary([a - b for a, b in zip(pair_after, pair_before)])
    pair_names = [s.class_names[k] for k in pair]
    ratio = _summary(recovered)
    gain = _summary([a - b for a, b in zip(after_c, before_c)])
    verdict = share_verdict(ratio["mean"], ratio["se"], 0.9)
    if verdict not in (REPRODUCED, UNDETERMINED):
        verdict = PARTLY if gain["mean"] - 2 * gain["se"] > 0 else NOT
    name = s.class_names[c]
    return {
        "title": f"Class {c} ({name}) left out of the transfer set, then its bias shifted (section 3)",
        "paper": "MNIST without any 3 in the transfer set: 206 test errors, 133 of them on the 1010 "
        "test 3s; raising the bias of class 3 by 3.5 (chosen on test) gave 109 errors, "
        "98.6% of the 3s right.",
        "criterion": f"After the shift of class {c}, fitted on validation rows (never on test), the "
        f"student gets at least 90% of the test accuracy on class {c} that the same "
        f"student gets when its transfer set has the class (reproduced when the ratio's "
        f"mean - 2 SE >= 0.9; partly when the shift raises that class's accuracy beyond "
        f"2 SE; otherwise not).",
        "settings": {
            "student": f"MLP{p.student_hidden}, {p.student_epochs} epochs, T={p.exp1_temperature:g}, "
            f"alpha={alpha}",
            "left_out_class": c,
            "left_out_name": name,
            "transfer_rows": len(keep),
            "shift_fitted_on": f"{len(s.y_val)} validation rows, accuracy, grid step 0.05 in [-10, 10]",
        },
        "results": {
            "reference_class_accuracy": _summary(ref_c),
            "class_accuracy_before": _summary(before_c),
            "class_accuracy_after": _summary(after_c),
            "test_accuracy_before": _summary(before),
            "test_accuracy_after": _summary(after),
            "shift": _summary(shift),
            "class_recovery_ratio": ratio,  # after the shift / with the class in the transfer set
            "two_classes_only": f"transfer set of classes {pair} ({', '.join(pair_names)}) only, "
            f"{len(only_pair)} rows",
            "two_classes_test_accuracy_before": _summary(pair_before),
            "two_classes_test_accuracy_after": _summary(pair_after),
            "two_classes_gain": pair_gain,
            "two_classes_shifts": [
                float(np.mean([sh[i] for sh in pair_shifts])) for i in range(len(pair))
            ],
            "two_classes_verdict": _judge(
                lab, beats_verdict([(pair_gain["mean"], pair_gain["se"])])
            ),
        },
        "notes": [
            (
                f"The paper's second variant kept only 7s and 8s in the transfer set (47.3% test errors), "
                f"then lowered the biases of 7 and 8 by 7.6, chosen on test (13.2% errors). Here the "
                f"two shifts are fitted on validation rows; that variant is judged apart (reproduced when "
                f"the shift raises test accuracy beyond 2 SE): "
                f"{_judge(lab, beats_verdict([(pair_gain['mean'], pair_gain['se'])])) or 'no verdict'}."
            ),
        ],
        "headline": f"class {name}: {np.mean(before_c):.1%} -> {np.mean(after_c):.1%} after a shift of "
        f"{np.mean(shift):+.2f} (with the class in the transfer set: {np.mean(ref_c):.1%}); "
        f"only {pair_names[0]}/{pair_names[1]}: {1 - np.mean(pair_before):.1%} -> "
        f"{1 - np.mean(pair_after):.1%} errors (paper 47.3% -> 13.2%)",
        "verdict": _judge(lab, verdict),
    }


def experiment_4(lab: Lab) -> dict[str, Any]:
    """An ensemble distilled into one model of a member's size, hard weight 0.5."""
    p, s = lab.profile, lab.splits
    ens = lab.ensemble()
    member = float(np.mean(ens.member_test_accuracy))
    scores, fitted = {}, {}
    for T in p.ensemble_temperatures:  # chosen on validation, seed 0
        fitted[T] = lab.fit(
            lab.student(
                p.member_hidden,
                p.member_epochs,
                0,
                temperature=T,
                alpha=p.ensemble_alpha,
                dropout=p.member_dropout,
            ),
            teacher="ensemble",
        )
        scores[T] = _acc(fitted[T], s.X_val, s.y_val)
    T = max(scores, key=lambda t: scores[t])
    distilled, kept = [], []
    for seed in range(p.seeds):
        model = (
            fitted[T]
            if seed == 0
            else lab.fit(
                lab.student(
                    p.member_hidden,
                    p.member_epochs,
                    seed,
                    temperature=T,
                    alpha=p.ensemble_alpha,
                    dropout=p.member_dropout,
                ),
                teacher="ensemble",
            )
        )
        distilled.append(_acc(model, s.X_test, s.y_test))
        kept.append(_share(distilled[-1], member, ens.test_accuracy))
    import torch

    proba = torch.softmax(torch.from_numpy(ens.test_logits), dim=-1).numpy()  # (n, M, C)
    by_size = [
        float(np.mean(proba[:, :k].mean(1).argmax(1) == s.y_test)) for k in range(1, p.members + 1)
    ]
    share = _summary(kept)
    return {
        "title": "An ensemble distilled into a single model (section 4)",
        "paper": "Speech: an ensemble of 10 DNNs 61.1% frame accuracy, one model 58.9%, the "
        "distilled single model 60.8%: more than 80% of the ensemble's gain kept.",
        "criterion": "The distilled model keeps at least 80% of the ensemble's gain over the mean "
        "single member (reproduced when mean - 2 SE >= 0.8; partly when mean - 2 SE > 0; "
        "otherwise not). Fashion-MNIST stands in for the speech data.",
        "settings": {
            "members": f"{p.members} x MLP{p.member_hidden}, dropout {p.member_dropout}, "
            f"{p.member_epochs} epochs, different seeds",
            "student": f"MLP{p.member_hidden} (a member's size), dropout {p.member_dropout}, "
            f"{p.member_epochs} epochs",
            "alpha": p.ensemble_alpha,
            "temperatures_tried": list(p.ensemble_temperatures),
            "temperature_val_accuracy": {str(t): v for t, v in scores.items()},
            "temperature": T,
        },
        "results": {
            "ensemble_test_accuracy": ens.test_accuracy,
            "member_test_accuracy": ens.member_test_accuracy,
            "mean_member_test_accuracy": member,
            "ensemble_accuracy_by_size": by_size,
            "distilled_test_accuracy": _summary(distilled),
            "gain_kept": share,
        },
        "headline": f"ensemble gain kept {share['mean']:.0%} (paper > 80%)",
        "verdict": _judge(lab, share_verdict(share["mean"], share["se"], 0.8)),
    }


def experiment_5(lab: Lab) -> dict[str, Any]:
    """A small fraction of the data: hard labels with early stopping vs soft targets."""
    p, s = lab.profile, lab.splits
    lab.big_teacher()
    alpha = choose_alpha(lab)
    fractions = sorted(p.fractions)
    small = fractions[0]
    n = len(s.y_train)

    def rows(fraction: float, seed: int) -> np.ndarray:
        order = _stratified_order(s.y_train, np.random.default_rng(10_000 + seed))
        return np.sort(order[: max(s.n_classes, round(fraction * n))])

    temps = sorted({2.0, 5.0, float(p.exp1_temperature)})
    scores = {}
    for T in temps:  # the soft students' temperature, chosen on validation at the smallest fraction
        model = lab.fit(
            lab.student(p.student_hidden, p.fraction_epochs, 0, temperature=T, alpha=alpha),
            rows(small, 0),
            teacher="big",
        )
        scores[T] = _acc(model, s.X_val, s.y_val)
    T = max(scores, key=lambda t: scores[t])
    hard = np.empty((p.seeds, len(fractions)))
    soft = np.empty((p.seeds, len(fractions)))
    hard_all = []
    for seed in range(p.seeds):
        for j, f in enumerate(fractions):
            r = rows(f, seed)
            h = lab.fit(
                lab.student(
                    p.student_hidden,
                    p.fraction_epochs,
                    seed,
                    early_stopping=True,
                    n_iter_no_change=p.early_stopping_patience,
                ),
                r,
            )
            hard[seed, j] = _acc(h, s.X_test, s.y_test)
            d = lab.fit(
                lab.student(p.student_hidden, p.fraction_epochs, seed, temperature=T, alpha=alpha),
                r,
                teacher="big",
            )
            soft[seed, j] = _acc(d, s.X_test, s.y_test)
        if fractions[-1] < 1.0:
            h = lab.fit(
                lab.student(
                    p.student_hidden,
                    p.fraction_epochs,
                    seed,
                    early_stopping=True,
                    n_iter_no_change=p.early_stopping_patience,
                )
            )
            hard_all.append(_acc(h, s.X_test, s.y_test))
        else:
            hard_all.append(float(hard[seed, -1]))
    recovered = _summary([_share(soft[i, 0], hard[i, 0], hard_all[i]) for i in range(p.seeds)])
    return {
        "title": f"Soft targets from {small:.0%} of the data (section 6)",
        "paper": "Speech, 3% of the training set: hard labels (early stopping) 44.5% test frame "
        "accuracy, soft targets (no early stopping) 57.0%, all the data with hard labels 58.9%.",
        "criterion": f"Soft targets on {small:.0%} of the rows recover at least 80% of the gap between "
        f"hard labels on {small:.0%} and hard labels on all rows (reproduced when "
        f"mean - 2 SE >= 0.8; partly when mean - 2 SE > 0; otherwise not).",
        "settings": {
            "student": f"MLP{p.student_hidden}, up to {p.fraction_epochs} epochs",
            "hard": f"early stopping on 10% of the subset's own rows, patience {p.early_stopping_patience}",
            "soft": f"no early stopping, alpha={alpha}, T={T:g} chosen on validation among "
            f"{temps} at {small:.0%}",
            "temperature_val_accuracy": {str(t): v for t, v in scores.items()},
            "fractions": fractions,
            "rows": {str(f): len(rows(f, 0)) for f in fractions},
        },
        "results": {
            "fractions": fractions,
            "hard_test_accuracy": [_summary(list(hard[:, j])) for j in range(len(fractions))],
            "soft_test_accuracy": [_summary(list(soft[:, j])) for j in range(len(fractions))],
            "hard_all_data_test_accuracy": _summary(hard_all),
            "gap_recovered": recovered,
        },
        "headline": f"{small:.0%} of the data: hard {hard[:, 0].mean():.4f}, soft {soft[:, 0].mean():.4f}, "
        f"all data {np.mean(hard_all):.4f}; gap recovered {recovered['mean']:.0%} (paper 87%)",
        "verdict": _judge(lab, share_verdict(recovered["mean"], recovered["se"], 0.8)),
    }


def _specialists(
    lab: Lab, splits: Any, teacher: str, n_specialists: int, classes_per_specialist: int, seed: int
) -> Any:
    """A generalist plus specialists fitted from the cache of ``teacher``; charges the student clock."""
    import time

    from kdpipe import DistilledClassifier, SpecialistEnsembleClassifier

    p = lab.profile
    generalist = DistilledClassifier(
        hidden_layer_sizes=p.generalist_hidden,
        max_epochs=p.generalist_epochs,
        batch_size=p.batch_size,
        learning_rate=p.learning_rate,
        temperature=2.0,
        alpha=_SPECIALIST_ALPHA,
        random_state=seed,
        device=lab.device,
    )
    model = SpecialistEnsembleClassifier(
        generalist,
        n_specialists=n_specialists,
        classes_per_specialist=classes_per_specialist,
        specialist_max_epochs=p.specialist_epochs,
        specialist_learning_rate=p.learning_rate,
        specialist_batch_size=p.batch_size,
        specialist_temperature=2.0,
        specialist_alpha=_SPECIALIST_ALPHA,
        device=lab.device,
        random_state=seed,
    )
    start = time.perf_counter()
    model.fit(splits.X_train, splits.y_train, teacher_logits=lab.teachers[teacher].cache)
    seconds = time.perf_counter() - start
    lab.student_seconds += seconds
    lab.student_fits += 1 + len(model.specialists_)
    lab.say(
        f"  generalist + {len(model.specialists_)} specialists on {splits.name}, seed {seed}: "
        f"{seconds:.1f}s"
    )
    row_epochs = model.generalist_.n_iter_ * len(splits.y_train)
    row_epochs += sum(len(sp.history) * sp.n_rows for sp in model.specialists_)
    lab.distilled_row_epochs[teacher] = lab.distilled_row_epochs.get(teacher, 0) + row_epochs
    return model


_SPECIALIST_ALPHA = 0.1


def _image_specialists(lab: Lab) -> dict[str, Any]:
    """Specialists on the run's image data, from the big teacher's cache: which classes they take."""
    p, s = lab.profile, lab.splits
    lab.big_teacher()
    general, ensemble, clusters = [], [], []
    for seed in range(p.seeds):
        model = _specialists(
            lab, s, "big", p.image_specialists, p.image_classes_per_specialist, seed
        )
        general.append(_acc(model.generalist_, s.X_test, s.y_test))
        ensemble.append(_acc(model, s.X_test, s.y_test))
        if seed == 0:
            clusters = [
                ", ".join(s.class_names[int(c)] for c in cluster) for cluster in model.clusters_
            ]
    return {
        "image_specialists": f"{p.image_specialists} specialists of {p.image_classes_per_specialist} "
        f"classes on {s.name}, from the big teacher's cache",
        "image_clusters_seed0": clusters,
        "image_generalist_test_accuracy": _summary(general),
        "image_ensemble_test_accuracy": _summary(ensemble),
        "image_gain": _summary([e - g for e, g in zip(ensemble, general)]),
    }


def experiment_6(lab: Lab) -> dict[str, Any]:
    """A generalist plus specialists on many confusable classes, with table 4."""
    from kdpipe.reproduce.data import confusable_splits

    p = lab.profile
    s = confusable_splits(p.confusable_rows, p.confusable_classes, p.confusable_group_size)
    teacher = lab.train_teacher(
        "confusable",
        n_members=1,
        hidden=p.confusable_teacher_hidden,
        dropout=0.0,
        epochs=p.confusable_teacher_epochs,
        jitter_copies=0,
        splits=s,
    )
    alpha = _SPECIALIST_ALPHA

    def fit(n_specialists: int, seed: int) -> Any:
        return _specialists(lab, s, "confusable", n_specialists, p.classes_per_specialist, seed)

    scores, fitted = {}, {}
    for k in p.specialist_counts:  # chosen on validation, seed 0
        fitted[k] = fit(k, 0)
        scores[k] = _acc(fitted[k], s.X_val, s.y_val)
    k = max(scores, key=lambda n: scores[n])
    general, ensemble, gain, tables = [], [], [], []
    for seed in range(p.seeds):
        model = fitted[k] if seed == 0 else fit(k, seed)
        table = model.coverage_report(s.X_test, s.y_test)
        tables.append(table.to_dict())
        general.append(table.overall.generalist_accuracy)
        ensemble.append(table.overall.ensemble_accuracy)
        gain.append(ensemble[-1] - general[-1])
        if seed == 0:
            clusters = [[s.class_names[int(c)] for c in cluster] for cluster in model.clusters_]
    by_covering: dict[int, dict[str, list[float]]] = {}
    for table in tables:
        for row in table["rows"]:
            entry = by_covering.setdefault(
                row["n_covering"], {"count": [], "generalist": [], "ensemble": []}
            )
            entry["count"].append(row["count"])
            entry["generalist"].append(row["generalist_accuracy"])
            entry["ensemble"].append(row["ensemble_accuracy"])
    table4 = [
        {
            "n_covering": n,
            "test_rows_mean": float(np.mean(e["count"])),
            "generalist_accuracy": float(np.mean(e["generalist"])),
            "ensemble_accuracy": float(np.mean(e["ensemble"])),
            "relative_improvement": (
                np.mean(e["ensemble"]) / np.mean(e["generalist"]) - 1.0
                if np.mean(e["generalist"]) > 0
                else math.nan
            ),
        }
        for n, e in sorted(by_covering.items())
    ]
    delta = _summary(gain)
    relative = delta["mean"] / float(np.mean(general))
    image = _image_specialists(lab)
    return {
        "title": "A generalist plus specialists on confusable classes (section 5, table 4)",
        "paper": "JFT (15,000 classes): 61 specialists raised test accuracy from 25.0% to 26.1% "
        "(+4.4% relative); the gain grew with the number of specialists covering a test "
        "case (table 4).",
        "criterion": "The generalist + specialists beat the generalist alone on test, the paired "
        "difference over seeds beyond 2 SE (reproduced); table 4 is reported, not judged.",
        "settings": {
            "data": f"make_confusable_classification: {p.confusable_rows} rows, "
            f"{p.confusable_classes} classes in groups of {p.confusable_group_size}, "
            f"split {s.sizes()}",
            "teacher": f"MLP{p.confusable_teacher_hidden}, {p.confusable_teacher_epochs} epochs, "
            f"test accuracy {teacher.test_accuracy:.4f}",
            "generalist": f"MLP{p.generalist_hidden} distilled at T=2, alpha={alpha}, "
            f"{p.generalist_epochs} epochs",
            "specialists": f"dustbin, {p.classes_per_specialist} classes each (overlapping), "
            f"{p.specialist_epochs} epochs, T=2, alpha={alpha}, clusters from the "
            f"generalist's predictions",
            "n_specialists_val_accuracy": {str(n): v for n, v in scores.items()},
            "n_specialists": k,
        },
        "results": {
            "teacher_test_accuracy": teacher.test_accuracy,
            "generalist_test_accuracy": _summary(general),
            "ensemble_test_accuracy": _summary(ensemble),
            "gain": delta,
            "relative_gain": relative,
            "table4": table4,
            "clusters_seed0": [", ".join(c) for c in clusters],
            **image,
        },
        "headline": f"{k} specialists: {np.mean(general):.4f} -> {np.mean(ensemble):.4f} "
        f"({relative:+.1%} relative; paper +4.4%); on {lab.splits.name}: "
        f"{image['image_generalist_test_accuracy']['mean']:.4f} -> "
        f"{image['image_ensemble_test_accuracy']['mean']:.4f}",
        "verdict": _judge(lab, beats_verdict([(delta["mean"], delta["se"])])),
    }


RUNNERS = {
    1: experiment_1,
    2: experiment_2,
    3: experiment_3,
    4: experiment_4,
    5: experiment_5,
    6: experiment_6,
}
