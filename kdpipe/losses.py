"""The distillation math of Hinton, Vinyals & Dean (2015), section 2. Nothing else.

Dense teacher logits go to :func:`distillation_loss`; the sparse targets of a sparse
logit cache (top-k plus tail, or sampled classes; :mod:`kdpipe.sparse_targets`) go to
:func:`sparse_distillation_loss`, whose approximation error is stated there.

Shapes: ``n`` rows, ``M`` ensemble members, ``C`` classes. Teacher logits are ``(n, C)``
(one teacher) or ``(n, M, C)`` (an ensemble). Every function computes in float32 whatever
the input dtype (float16 and bfloat16 logits lose too much in ``exp``), and shifts every
row by its maximum before ``exp`` (``log_softmax`` does), so logits of magnitude 1e4 stay
finite. Sparse targets, which serve thousands of classes, have their soft and hard terms
and gradients (eq. 2) computed together by hand, from one ``exp`` pass over the classes
each; dense targets go through autograd.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, overload

import torch
import torch.nn.functional as F

from kdpipe.sparse_targets import SampledTargets, SparseTargets, TopKSampledTargets, TopKTargets

__all__ = [
    "soft_targets",
    "distillation_loss",
    "hard_label_loss",
    "logit_matching_loss",
    "plus_hard_term",
    "parse_temperature",
    "parse_combine",
    "sparse_distillation_loss",
    "tail_logsumexp",
]

Combine = Literal["arithmetic", "geometric"]


def _as_float32(x: torch.Tensor | object, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not (t.is_floating_point()):
        raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    return t.float()


def parse_temperature(temperature: Any, name: str = "temperature") -> float:
    """``temperature`` as a float; a ``ValueError`` (naming ``name``) unless it is finite and > 0."""
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}") from None
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}")
    return value


def _parse_alpha(alpha: Any) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return alpha


def parse_combine(combine: Any) -> Combine:
    """``combine`` checked: ``"arithmetic"`` or ``"geometric"``."""
    if combine not in ("arithmetic", "geometric"):
        raise ValueError(f"combine must be 'arithmetic' or 'geometric', got {combine!r}")
    return combine


def _member_logits(teacher_logits: torch.Tensor | object) -> torch.Tensor:
    """Teacher logits as ``(n, M, C)`` float32."""
    v = _as_float32(teacher_logits, "teacher_logits")
    if v.ndim == 2:
        return v.unsqueeze(1)
    if v.ndim != 3:
        raise ValueError(
            f"teacher_logits must have shape (n, C) or (n, M, C), got shape {tuple(v.shape)}"
        )
    return v


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if t.device == device else t.to(device)


def _check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.ndim != 2:
        raise ValueError(
            f"student_logits must have shape (n, C), got shape {tuple(student_logits.shape)}"
        )
    n, c = student_logits.shape
    if teacher_logits.shape[0] != n or teacher_logits.shape[-1] != c:
        raise ValueError(
            f"student logits of shape {tuple(student_logits.shape)} do not match teacher "
            f"logits of shape {tuple(teacher_logits.shape)}: rows and classes must agree"
        )


def soft_targets(
    teacher_logits: torch.Tensor, temperature: float, combine: Combine = "arithmetic"
) -> torch.Tensor:
    """Soft targets ``p = softmax(v / T)`` of a teacher or an ensemble.

    Parameters
    ----------
    teacher_logits : Tensor of shape (n, C) or (n, M, C)
        Raw logits of one teacher or of ``M`` ensemble members.
    temperature : float
        Softmax temperature ``T > 0``.
    combine : {"arithmetic", "geometric"}, default="arithmetic"
        How members are combined: the mean of the members' ``softmax(v_m / T)``, or
        their normalized geometric mean, which equals ``softmax(mean_m(v_m) / T)``.

    Returns
    -------
    Tensor of shape (n, C), float32
        Rows are probability distributions.

    Examples
    --------
    >>> import torch
    >>> from kdpipe.losses import soft_targets
    >>> v = torch.tensor([[2.0, 0.0]])
    >>> soft_targets(v, temperature=1.0).double().round(decimals=3).tolist()
    [[0.881, 0.119]]
    >>> soft_targets(v, temperature=4.0).double().round(decimals=3).tolist()  # softer
    [[0.622, 0.378]]
    >>> members = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])  # (n, M, C)
    >>> soft_targets(members, 1.0).double().round(decimals=3).tolist()  # the members' mean
    [[0.5, 0.5]]
    """
    return _soft_targets_and_log(_member_logits(teacher_logits), temperature, combine)[0]


def _soft_targets_and_log(
    v: torch.Tensor, temperature: Any, combine: Any, *, log: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`soft_targets` of member logits ``v`` ``(n, M, C)``, and with ``log`` their
    logarithm: ``log_softmax`` of the same logits where ``p`` is one softmax (one
    teacher, or the geometric mean; a student equal to its teacher then has a KL of
    exactly 0), else the ``log`` of the members' mean with ``p`` clamped to the smallest
    normal float (``0 log 0 = 0``; at large C about half the time of ``xlogy`` on a CPU).
    """
    temperature = parse_temperature(temperature)
    combine = parse_combine(combine)
    if v.shape[1] > 1 and combine == "arithmetic":
        p = F.softmax(v / temperature, dim=-1).mean(dim=1)
        return p, (p.clamp_min(torch.finfo(p.dtype).tiny).log() if log else None)
    u = (v[:, 0] if v.shape[1] == 1 else v.mean(dim=1)) / temperature
    if not log:
        return F.softmax(u, dim=-1), None
    # a -inf logit (a masked class): log p = -inf, clamped so that p log p is 0, not nan
    return F.softmax(u, dim=-1), F.log_softmax(u, dim=-1).clamp_min(torch.finfo(u.dtype).min)


def _label_codes(y: torch.Tensor | object, z: torch.Tensor, checked: bool = False) -> torch.Tensor:
    """Labels as int64 codes on ``z``'s device, validated against ``z`` of shape (n, C).

    ``checked=True`` skips the range check, which reads the labels back from a GPU (a
    device sync): for callers that checked the codes on the CPU.
    """
    y = torch.as_tensor(y, device=z.device)
    if checked:
        return y.long()
    n, n_classes = z.shape
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class codes, got dtype {y.dtype}")
    out_of_range = (y < -1) | (y >= n_classes)
    if bool(out_of_range.any()):
        bad = y[out_of_range].unique().tolist()
        raise ValueError(
            f"labels must be class codes in [-1, {n_classes}) (-1 = unlabeled), got {bad}"
        )
    return y.long()


def hard_label_loss(
    student_logits: torch.Tensor, y: torch.Tensor, *, labels_checked: bool = False
) -> torch.Tensor:
    """Cross-entropy with the true labels at ``T = 1``, averaged over labeled rows.

    Rows labeled ``-1`` are unlabeled and contribute nothing; with no labeled row the
    loss is an exact zero that still carries a (zero) gradient.

    Parameters
    ----------
    student_logits : Tensor of shape (n, C)
    y : Tensor of shape (n,)
        Integer class codes in ``[-1, C)``.
    labels_checked : bool, default=False
        The caller has checked, on the CPU, that ``y`` holds codes in ``[-1, C)`` and
        at least one of them is labeled: skip both checks, which read the labels back
        from a GPU (a device sync). The training engine checks every minibatch's labels
        in numpy before they reach the device.

    Returns
    -------
    Tensor, scalar float32

    Examples
    --------
    >>> import torch
    >>> from kdpipe.losses import hard_label_loss
    >>> z = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    >>> round(float(hard_label_loss(z, torch.tensor([0, -1]))), 4)  # row 1 is unlabeled
    0.6931
    """
    z = _as_float32(student_logits, "student_logits")
    if z.ndim != 2:
        raise ValueError(f"student_logits must have shape (n, C), got shape {tuple(z.shape)}")
    codes = _label_codes(y, z, labels_checked)
    if not labels_checked and not bool((codes >= 0).any()):
        return z[:0].sum()  # no labeled row: an exact zero, with a (zero) gradient
    return F.cross_entropy(z, codes, ignore_index=-1)  # the mean over labeled rows


def plus_hard_term(
    soft: torch.Tensor, z: torch.Tensor, y: Any, alpha: float, labels_checked: bool = False
) -> torch.Tensor:
    """``soft + alpha * hard_label_loss(z, y)`` (``soft`` alone when ``y`` is None).

    Bad labels are an error even at ``alpha = 0``; ``labels_checked`` as in
    :func:`hard_label_loss`.
    """
    if y is None:
        return soft
    if alpha > 0.0:
        return soft + alpha * hard_label_loss(z, y, labels_checked=labels_checked)
    if not labels_checked:
        _label_codes(y, z)
    return soft


class _Target(NamedTuple):
    """A sparse soft target as :class:`_TargetCrossEntropy` takes it (see there)."""

    neg_entropy: torch.Tensor
    base: torch.Tensor | None = None
    weight_classes: torch.Tensor | None = None  # the classes of weight
    weight: torch.Tensor | None = None
    bucket_of: torch.Tensor | None = None
    bucket_mass: torch.Tensor | None = None


class _Saved(NamedTuple):
    """What :class:`_TargetCrossEntropy` keeps from its forward pass for the backward one."""

    z: torch.Tensor
    e_t: torch.Tensor
    s_t: torch.Tensor
    mass: torch.Tensor
    base: torch.Tensor | None
    weight_classes: torch.Tensor | None  # the forward's index
    weight: torch.Tensor | None
    bucket_of: torch.Tensor | None
    bucket_mass: torch.Tensor | None
    log_tail: torch.Tensor | None
    tail_sums: torch.Tensor | None
    codes: torch.Tensor | None
    e_1: torch.Tensor | None
    s_1: torch.Tensor | None


class _TargetCrossEntropy(torch.autograd.Function):
    """Per-row ``KL(P || q_T)`` of student logits ``z`` (n, C) against a sparse soft
    target ``P`` and cross-entropy with hard labels at ``T = 1``, with their exact
    gradients (eq. 2), from two ``exp`` passes over ``(n, C)``.

    The target is any sum of: ``base`` ``(n,)`` on every class; ``weight`` ``(n, K)`` at
    the classes ``index`` ``(n, K)`` (repeats add up); and buckets: on the classes
    outside ``bucket_of`` ``(n, E, k)``, ``bucket_mass`` ``(n, E)`` spread like the
    student's own ``q_T`` (each entry ``1/E``). It never becomes an ``(n, C)`` tensor;
    its ``sum P log P`` is ``neg_entropy`` ``(n,)``, given (for a bucket, the bucket's
    ``p_tail log p_tail``: the KL is the same, as ``P_j / q_j`` is constant on the tail).
    The hard term covers rows of ``codes`` that are not ``-1`` (``None``: no hard term,
    and no second ``exp`` pass). The targets, read from caches, are constants (:func:`sparse_distillation_loss`
    refuses targets that require grad), and there is no second derivative (a backward
    pass with ``create_graph=True`` is an error).

    Forward keeps ``exp(z / T - max)`` and ``exp(z - max)``; backward is
    ``((sum_j P_j) q_T - P) / T`` and ``q_1 - onehot(y)``. Autograd through
    ``log_softmax``, a ``gather`` and a tail sum takes about twice as many full passes
    over the classes, which at thousands of classes is most of a student's step. Dense
    targets stay with autograd (:func:`distillation_loss`): at tens of classes this
    Function's two dozen small operations cost more than the passes they save.
    """

    @staticmethod
    def forward(
        ctx: Any,
        z: torch.Tensor,
        temperature: float,
        neg_entropy: torch.Tensor | None,
        base: torch.Tensor | None,
        index: torch.Tensor | None,
        weight: torch.Tensor | None,
        bucket_of: torch.Tensor | None,
        bucket_mass: torch.Tensor | None,
        codes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = z / temperature
        top_t = d.amax(dim=-1, keepdim=True)
        d.sub_(top_t)
        e_t = d.exp()
        s_t = e_t.sum(dim=-1, keepdim=True)
        log_s_t = s_t.log()  # log q_T = d - log_s_t
        lse_t = (top_t + log_s_t)[:, 0]
        kl = z.new_zeros(len(z)) if neg_entropy is None else neg_entropy.clone()
        mass = z.new_zeros(len(z))
        if base is not None:
            kl -= base * (d.sum(dim=-1) - z.shape[1] * log_s_t[:, 0])
            mass += base * z.shape[1]
        if weight is not None:
            assert index is not None
            kl -= torch.linalg.vecdot(weight, d.gather(1, index) - log_s_t)
            mass += weight.sum(dim=-1)
        log_tail = tail_sums = None
        ctx.small_rows = []
        if bucket_of is not None:
            assert bucket_mass is not None
            log_tail, tail_sums, ctx.tails, ctx.small_rows = _log_tail_sums(
                z, temperature, e_t, top_t, bucket_of
            )
            share = bucket_mass / bucket_of.shape[1]  # (n, E): the entries are averaged
            kl -= (share * (log_tail - lse_t[:, None])).sum(dim=1)  # - p_tail log q_tail
            mass += share.sum(dim=1)
        e_1 = s_1 = None
        hard = torch.zeros_like(kl)
        if codes is not None:
            top = top_t * temperature  # max z up to rounding: shift enough against overflow
            e_1 = (z - top).exp_()
            s_1 = e_1.sum(dim=-1, keepdim=True)
            picked = z.gather(1, codes.clamp_min(0)[:, None])[:, 0]
            hard = torch.where(codes >= 0, top[:, 0] + s_1[:, 0].log() - picked, hard)
        ctx.temperature = temperature
        ctx.save_for_backward(
            *_Saved(
                z,
                e_t,
                s_t,
                mass,
                base,
                index,
                weight,
                bucket_of,
                bucket_mass,
                log_tail,
                tail_sums,
                codes,
                e_1,
                s_1,
            )
        )
        return kl, hard

    @staticmethod
    def backward(
        ctx: Any, g_soft: torch.Tensor, g_hard: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # backward(create_graph=True): a second derivative
            raise RuntimeError(
                "sparse_distillation_loss has no second derivative (its gradient is "
                "written out, eq. 2): backward with create_graph=True is not supported"
            )
        saved = _Saved(*ctx.saved_tensors)
        temperature = ctx.temperature
        a = (g_soft / temperature)[:, None]  # (n, 1)
        grad = saved.e_t * (a * saved.mass[:, None] / saved.s_t)
        if saved.base is not None:
            grad.sub_(a * saved.base[:, None])
        if saved.weight is not None:
            grad.scatter_add_(1, saved.weight_classes, -a * saved.weight)
        if saved.bucket_of is not None:
            assert saved.bucket_mass is not None and saved.log_tail is not None
            assert saved.tail_sums is not None
            _sub_bucket_targets(
                grad,
                a,
                saved.z,
                temperature,
                ctx.tails,
                saved.bucket_of,
                saved.bucket_mass,
                saved.log_tail,
                saved.tail_sums,
                ctx.small_rows,
            )
        if saved.codes is not None:
            assert saved.e_1 is not None and saved.s_1 is not None
            b = torch.where(saved.codes >= 0, g_hard, torch.zeros_like(g_hard))[:, None]
            grad.addcmul_(saved.e_1, b / saved.s_1)
            grad.scatter_add_(1, saved.codes.clamp_min(0)[:, None], -b)
        return (grad,) + (None,) * 9


def _log_tail_sums(
    z: torch.Tensor,
    temperature: float,
    e_t: torch.Tensor,
    top_t: torch.Tensor,
    kept: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
    """For the kept classes ``S`` = ``kept`` ``(n, E, k)``: ``log sum_{j not in S}
    exp(z_j / T)`` ``(n, E)``, the tail sums of ``e_t = exp(z / T - top_t)`` ``(n, E)``,
    per entry ``e_t`` with the kept classes zeroed ``(n, C)`` (the backward pass spreads
    the bucket over it), and per entry the rows whose tail sum is below the smallest
    normal float (``None``: no such row).

    The tail is summed over its own classes (float32 loses nothing to cancellation
    however small its share). Rows whose tail sum is below the smallest normal float
    (the tail over 87 units of ``z / T`` below the row's maximum) are summed again as a
    masked log-sum-exp (asking which rows they are reads one flag back from a GPU, once:
    the backward pass reuses the answer).
    """
    logs, sums, tails, small_rows = [], [], [], []
    for entry in range(kept.shape[1]):
        tail = e_t.scatter(1, kept[:, entry], 0.0)
        total = tail.sum(dim=-1)  # (n,)
        small = total < torch.finfo(total.dtype).tiny
        log_tail = torch.log(torch.where(small, torch.ones_like(total), total)) + top_t[:, 0]
        rows = None
        if bool(small.any()):
            rows = small.nonzero(as_tuple=True)[0]
            masked = (z[rows] / temperature).scatter(1, kept[rows, entry], float("-inf"))
            log_tail = log_tail.index_put((rows,), masked.logsumexp(dim=-1))
        logs.append(log_tail)
        sums.append(total)
        tails.append(tail)
        small_rows.append(rows)
    return torch.stack(logs, dim=1), torch.stack(sums, dim=1), tails, small_rows


def _sub_bucket_targets(
    grad: torch.Tensor,
    a: torch.Tensor,
    z: torch.Tensor,
    temperature: float,
    tails: list[torch.Tensor],
    kept: torch.Tensor,
    mass: torch.Tensor,
    log_tail: torch.Tensor,
    tail_sums: torch.Tensor,
    small_rows: list[torch.Tensor | None],
) -> None:
    """``grad -= a P`` for the buckets' tail targets ``P_j = p_tail exp(z_j / T) /
    sum_{i not in S} exp(z_i / T)`` on each entry's tail (``1/E`` each), in place."""
    n_entries = kept.shape[1]
    for entry, rows in enumerate(small_rows):
        # P_j = p_tail e_t_j / (the tail sum of e_t): the sum itself, not through its log,
        # whose rounding at large |z / T| would cost the gradient its precision
        factor = mass[:, entry] / n_entries / tail_sums[:, entry]
        if rows is not None:  # their e_t underflows on the tail: taken exactly below
            factor = factor.index_fill(0, rows, 0.0)
        # on the tail alone (the head zeroed, not subtracted and added back: no cancellation)
        grad.addcmul_(tails[entry], a * factor[:, None], value=-1.0)
        if rows is not None:
            tail = (z[rows] / temperature - log_tail[rows, entry : entry + 1]).exp()
            tail = tail.scatter(1, kept[rows, entry], 0.0)
            share = (mass[rows, entry] / n_entries)[:, None]
            grad.index_add_(0, rows, -(a[rows] * share) * tail)


def _soft_plus_hard(
    z: torch.Tensor,
    y: Any,
    target: _Target,
    *,
    temperature: float,
    alpha: float,
    labels_checked: bool,
) -> torch.Tensor:
    """``(1 - alpha) T**2 mean_rows KL(P || q_T) + alpha CE(y, q_1)`` for a sparse target
    ``P``; labels as in :func:`plus_hard_term` (``None``: the soft term alone)."""
    codes = None
    if y is not None:
        codes = _label_codes(y, z, labels_checked)
        if alpha == 0.0 or (not labels_checked and not bool((codes >= 0).any())):
            codes = None  # checked, and no hard term (no weight, or no labeled row)
    kl, hard = _TargetCrossEntropy.apply(z, temperature, *target, codes)
    loss = (1.0 - alpha) * temperature**2 * kl.mean()
    if codes is None:
        return loss
    return loss + alpha * hard.sum() / (codes >= 0).sum()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    temperature: float,
    alpha: float,
    combine: Combine = "arithmetic",
    labels_checked: bool = False,
) -> torch.Tensor:
    """The objective of section 2: soft-target KL at ``T`` plus hard-label CE at 1.

    ``(1 - alpha) * T**2 * KL(p_T || q_T) + alpha * CE(y, q_1)`` where
    ``q_T = softmax(z / T)`` of the student, ``p_T`` the teacher's soft targets and
    ``q_1`` the student's ordinary softmax, all from the same student logits ``z``.

    Parameters
    ----------
    student_logits : Tensor of shape (n, C)
    teacher_logits : Tensor of shape (n, C) or (n, M, C)
    y : Tensor of shape (n,), optional
        Integer class codes; ``-1`` marks an unlabeled row, which contributes the soft
        term only. ``None`` means every row is unlabeled.
    temperature : float
        Distillation temperature ``T > 0``.
    alpha : float in [0, 1]
        Weight of the hard-label term (the paper found a small one works best).
    combine : {"arithmetic", "geometric"}, default="arithmetic"
        Ensemble combination, see :func:`soft_targets`.
    labels_checked : bool, default=False
        Skip the checks of ``y`` (see :func:`hard_label_loss`).

    Returns
    -------
    Tensor, scalar float32

    Notes
    -----
    The soft term's gradient is ``(1/T)(q_i - p_i)`` per row (eq. 2), which shrinks as
    ``1/T**2`` for soft targets at high ``T``; multiplying by ``T**2`` keeps its balance
    with the hard term as ``T`` changes. KL and cross-entropy with the soft targets
    differ by the teacher's entropy, a constant, so their gradients are identical. The
    KL is averaged over all rows and the hard term over labeled rows.

    References
    ----------
    G. Hinton, O. Vinyals, J. Dean. Distilling the Knowledge in a Neural Network.
    arXiv:1503.02531, 2015.

    Examples
    --------
    >>> import torch
    >>> from kdpipe.losses import distillation_loss
    >>> v = torch.tensor([[3.0, 1.0, 0.0]])
    >>> float(distillation_loss(v, v, temperature=4.0, alpha=0.0))  # student = teacher
    0.0
    >>> z = torch.zeros(1, 3, requires_grad=True)
    >>> distillation_loss(z, v, torch.tensor([0]), temperature=2.0, alpha=0.5).backward()
    >>> z.grad.shape
    torch.Size([1, 3])
    """
    alpha = _parse_alpha(alpha)
    temperature = parse_temperature(temperature)
    z = _as_float32(student_logits, "student_logits")
    v = _on(_member_logits(teacher_logits), z.device)
    _check_pair(z, v)

    p, log_p = _soft_targets_and_log(v, temperature, combine, log=True)
    assert log_p is not None
    log_q = F.log_softmax(z / temperature, dim=-1)  # (n, C)
    kl = (p * (log_p - log_q)).sum(dim=-1).mean()
    loss = (1.0 - alpha) * temperature**2 * kl
    return plus_hard_term(loss, z, y, alpha, labels_checked)


def logit_matching_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Caruana's logit matching: ``1/2 sum_i (z_i - v_i)**2``, averaged over rows.

    Both sides are zero-meaned per row first (softmax ignores a per-row constant); an
    ensemble is represented by its members' mean logits. This is the high-temperature
    limit of :func:`distillation_loss` (eq. 4), up to the factor ``1/C``.

    Parameters
    ----------
    student_logits : Tensor of shape (n, C)
    teacher_logits : Tensor of shape (n, C) or (n, M, C)

    Returns
    -------
    Tensor, scalar float32

    Examples
    --------
    >>> import torch
    >>> from kdpipe.losses import logit_matching_loss
    >>> z = torch.tensor([[1.0, 0.0]])
    >>> float(logit_matching_loss(z + 7.0, z))  # a per-row constant does not count
    0.0
    >>> float(logit_matching_loss(torch.tensor([[2.0, 0.0]]), z))  # 1/2 (0.5^2 + 0.5^2)
    0.25
    """
    z = _as_float32(student_logits, "student_logits")
    v = _on(_member_logits(teacher_logits), z.device)
    _check_pair(z, v)
    v = v.mean(dim=1)  # (n, C)
    z = z - z.mean(dim=-1, keepdim=True)
    v = v - v.mean(dim=-1, keepdim=True)
    return 0.5 * (z - v).pow(2).sum(dim=-1).mean()


# -- sparse teacher targets ------------------------------------------------------------


@overload
def tail_logsumexp(
    targets: TopKTargets, temperature: float, *, bounds: Literal[False] = False
) -> torch.Tensor: ...


@overload
def tail_logsumexp(
    targets: TopKTargets, temperature: float, *, bounds: Literal[True]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def tail_logsumexp(
    targets: TopKTargets, temperature: float, *, bounds: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tail's log-mass ``log sum_{j not in top k} exp(v_j / T)`` of top-k targets.

    With ``beta = 1/T``, ``f(beta) = log sum_tail exp(beta v_j)`` is convex, with
    ``f(0) = log(C - k)``, ``f'(0)`` the tail's mean logit, and ``f, f'`` stored at each
    grid temperature. At a grid point (and as ``T -> inf``) the value is exact. Between
    two grid points it is the cubic Hermite interpolant in ``beta``, clipped to the
    exact bounds convexity gives: above both tangents, below the chord. Below the
    smallest grid temperature it is the tangent at that point (a lower bound); the upper
    bound there is ``min(chord to slope tail_max, log(C - k) + tail_max / T)``, as
    ``f' <= tail_max``.

    Parameters
    ----------
    targets : TopKTargets
        Torch tensors (see :meth:`TopKTargets.to_torch`).
    temperature : float
    bounds : bool, default=False
        Also return the exact lower and upper bounds.

    Returns
    -------
    Tensor of shape (b, E), float32, or a tuple (estimate, lower, upper)
    """
    beta = 1.0 / parse_temperature(temperature)
    count = targets.n_classes - targets.k
    f = torch.cat(
        [torch.full_like(targets.tail_mean, math.log(count)).unsqueeze(-1), targets.tail_lse],
        dim=-1,
    ).double()  # (b, E, G + 1)
    d = torch.cat([targets.tail_mean.unsqueeze(-1), targets.tail_slope], dim=-1).double()
    grid = [0.0] + [1.0 / t for t in targets.temperatures]  # ascending beta
    if beta in grid:
        exact = f[..., grid.index(beta)]
        out = (exact, exact, exact)
    elif beta > grid[-1]:
        step = beta - grid[-1]
        top = targets.tail_max.double()
        lower = f[..., -1] + d[..., -1] * step
        upper = torch.minimum(f[..., -1] + top * step, math.log(count) + beta * top)
        out = (lower, lower, upper)
    else:
        i = next(j for j in range(len(grid) - 1) if grid[j] < beta < grid[j + 1])
        a, b = grid[i], grid[i + 1]
        h, s = b - a, (beta - a) / (b - a)
        fa, fb, da, db = f[..., i], f[..., i + 1], d[..., i], d[..., i + 1]
        hermite = (
            (2 * s**3 - 3 * s**2 + 1) * fa
            + (s**3 - 2 * s**2 + s) * h * da
            + (-2 * s**3 + 3 * s**2) * fb
            + (s**3 - s**2) * h * db
        )
        lower = torch.maximum(fa + da * (beta - a), fb + db * (beta - b))
        upper = fa + (fb - fa) * s
        out = (torch.minimum(torch.maximum(hermite, lower), upper), lower, upper)
    estimate, lower, upper = (t.float() for t in out)
    return (estimate, lower, upper) if bounds else estimate


def _linear_tail_target(
    targets: TopKTargets,
    entries: slice,
    temperature: float,
    p_head: torch.Tensor,
    log_p_head: torch.Tensor,
    log_p_tail: torch.Tensor,
    idx: torch.Tensor,
) -> _Target:
    """The dense target of a ``"uniform"`` or ``"sampled"`` tail (see
    :func:`sparse_distillation_loss`), averaged over the entries, in the form
    :class:`_TargetCrossEntropy` takes, never an ``(n, E, C)`` tensor."""
    n, n_entries = idx.shape[0], idx.shape[1]
    p_tail = log_p_tail.exp()  # (n, E)
    neg_entropy = (p_head * log_p_head).sum(dim=-1)  # (n, E), the kept classes' share
    spread = targets.tail_spread
    if spread == "uniform":
        count = targets.n_classes - targets.k
        share = p_tail / count  # (n, E): every tail class, and the base under the head
        neg_entropy = neg_entropy + p_tail * (log_p_tail - math.log(count))
        base: torch.Tensor | None = share.mean(dim=1)
        index, weight = idx, p_head - share[..., None]
    elif spread == "sampled":
        assert isinstance(targets, TopKSampledTargets)
        counts = targets.tail_counts[:, entries]  # (n, E, s)
        shift = 1.0 / temperature - 1.0 / targets.draw_temperature
        log_w = torch.log(counts) + targets.tail_values[:, entries] * shift  # -inf in unused slots
        w = p_tail.unsqueeze(-1) * F.softmax(
            log_w, dim=-1
        )  # (n, E, s): the tail's mass on the drawn classes
        neg_entropy = neg_entropy + torch.xlogy(w, w).sum(dim=-1)
        base = None
        index = torch.cat([idx, targets.tail_indices[:, entries]], dim=-1)
        weight = torch.cat([p_head, w], dim=-1)
    else:
        raise ValueError(f"tail_spread must be 'bucket', 'uniform' or 'sampled', got {spread!r}")
    return _Target(
        neg_entropy.mean(dim=1),
        base=base,
        weight_classes=index.reshape(n, -1),
        weight=(weight / n_entries).reshape(n, -1),
    )


def _entries(targets: SparseTargets, combine: Combine) -> slice:
    """The entries a combination reads: the members (arithmetic), or their mean logits."""
    m = targets.n_members
    if m == 1:
        return slice(0, 1)
    return slice(0, m) if combine == "arithmetic" else slice(m, m + 1)


def sparse_distillation_loss(
    student_logits: torch.Tensor,
    targets: SparseTargets,
    y: torch.Tensor | None = None,
    *,
    temperature: float,
    alpha: float,
    combine: Combine = "arithmetic",
    labels_checked: bool = False,
) -> torch.Tensor:
    """:func:`distillation_loss` from sparse teacher targets, without dense teacher rows.

    Parameters
    ----------
    student_logits : Tensor of shape (n, C)
    targets : TopKTargets or SampledTargets
        Torch tensors on the student's device, ``n`` rows of ``C`` classes: constants,
        none of which may require grad (the loss has no gradient for them, and no second
        derivative: a backward pass with ``create_graph=True`` is an error).
    y : Tensor of shape (n,), optional
        As in :func:`distillation_loss`.
    temperature : float
        For sampled targets, the temperature they were drawn at (else a ``ValueError``).
    alpha : float in [0, 1]
    combine : {"arithmetic", "geometric"}, default="arithmetic"
        Arithmetic: the mean over members of each member's soft term (cross-entropy is
        linear in the target, so its gradient is the gradient with the mean of the
        members' probabilities). Geometric: the soft term with the targets' extra entry,
        made from the members' mean logits at build time.
    labels_checked : bool, default=False

    Returns
    -------
    Tensor, scalar float32

    Notes
    -----
    **Top-k plus tail.** Per row and entry the kept set ``S`` (``k`` classes) has the
    teacher's ``p_i = softmax(v/T)_i``, and the tail ``S^c`` the mass
    ``p_tail = exp(L_T) / Z`` with ``L_T`` from :func:`tail_logsumexp`. How that mass is
    spread over the tail classes is the targets' ``tail_spread``:

    - ``"uniform"``: ``p_j = p_tail / (C - k)`` on every tail class; the soft term is the
      dense KL with that target (no ``(n, E, C)`` tensor: the tail's sum of student
      log-probabilities is the row's sum minus the kept ones). Gradient on the tail
      ``T (q_j - p_tail / (C - k))``: the student's tail is held flat at the teacher's
      level instead of left free.
    - ``"bucket"``: the KL between the ``k + 1``-bucket distributions, the student's
      tail bucket ``q_tail = sum_{j not in S} q_j`` summed over the tail's own classes
      (float32, no cancellation). Gradient on the tail ``T (q_j - p_tail q_j / q_tail)``:
      the teacher's tail mass spread like the student's, which leaves the student's
      tail shape unconstrained. The loss is a lower bound of the dense one:
      ``dense - sparse = T**2 p_tail KL(p | tail || q | tail)``.
    - ``"sampled"`` (:class:`~kdpipe.sparse_targets.TopKSampledTargets`): ``p_tail``
      spread over the drawn tail classes in proportion to
      ``counts_j exp(v_j (1/T - 1/T_d))`` (``T_d`` the draws' temperature): at
      ``T = T_d`` the counts' share, an unbiased estimate of the teacher's tail
      distribution; elsewhere self-normalized importance weights (consistent, bias
      ``O(1/s)``). Other tail classes get target 0.

    The gradient is exact on ``S`` in every case, and on the tail the teacher's part is
    a distribution of the same mass ``p_tail``, so with the ``T**2`` factor the per-row
    error of the gradient is

        ``|| g_sparse - g_dense ||_1 <= 2 T p_tail(T, k)``,

    (for ``"uniform"`` exactly ``2 T p_tail`` times the total variation between the
    teacher's tail distribution and the uniform one), where ``p_tail(T, k)`` is the
    teacher's mass outside its top ``k`` at ``T``: it falls as ``k`` grows, rises with
    ``T`` and tends to ``(C - k)/C`` as ``T -> inf`` (high temperatures need larger
    ``k``). An error ``delta`` in ``L_T`` (zero at grid temperatures) moves ``p_tail`` by
    at most ``p_tail (e**|delta| - 1)``, which adds at most twice that, times ``T``, to
    the bound. Values stored as 8-bit codes (``TopK(values="uint8")``), each within
    ``h`` of the cache's logit, move every kept ``p_i`` by a factor within
    ``e**(+-2h/T)``: at most ``T (e**(2h/T) - 1)`` more. For an arithmetic ensemble the
    bound holds with the members' mean ``p_tail``, and the value differs from the dense
    KL by a constant (the entropy of the mean target against the members' mean
    entropy); gradients are what count.

    **Sampled.** ``p_hat = counts / s`` of classes drawn from ``softmax(v/T)``; the
    soft term is ``T**2 KL(p_hat || q_T)`` with the student's full softmax, whose
    gradient ``T (q - p_hat)`` is an unbiased estimate of the dense gradient
    ``T (q - p)`` at that temperature only: ``E[p_hat] = p``. Its variance per class is
    ``T**2 p_j (1 - p_j) / s``. Arithmetic ensembles average the members' estimates
    (each unbiased for its member); geometric uses draws from
    ``softmax(mean_m(v_m) / T)``.

    References
    ----------
    G. Hinton, O. Vinyals, J. Dean. Distilling the Knowledge in a Neural Network.
    arXiv:1503.02531, 2015.
    """
    alpha = _parse_alpha(alpha)
    temperature = parse_temperature(temperature)
    combine = parse_combine(combine)
    z = _as_float32(student_logits, "student_logits")
    if z.ndim != 2 or z.shape[1] != targets.n_classes or z.shape[0] != len(targets):
        raise ValueError(
            f"student logits of shape {tuple(z.shape)} do not match sparse targets of "
            f"{len(targets)} rows and {targets.n_classes} classes"
        )
    if any(getattr(getattr(targets, name), "requires_grad", False) for name in targets._arrays):
        raise ValueError(
            "sparse targets are constants: their tensors must not require grad (a teacher "
            "trained alongside the student gives dense logits to distillation_loss)"
        )
    entries = _entries(targets, combine)
    if isinstance(targets, TopKTargets):
        idx = targets.indices[:, entries]  # (n, E, k)
        log_tail = tail_logsumexp(targets, temperature)
        assert isinstance(log_tail, torch.Tensor)  # bounds=False: the estimate alone
        tail = log_tail[:, entries]  # (n, E)
        log_p = F.log_softmax(
            torch.cat([targets.values[:, entries] / temperature, tail.unsqueeze(-1)], dim=-1),
            dim=-1,
        )  # (n, E, k + 1)
        log_p_head, log_p_tail = log_p[..., :-1], log_p[..., -1]
        p_head = log_p_head.exp()
        if targets.tail_spread != "bucket":
            target = _linear_tail_target(
                targets, entries, temperature, p_head, log_p_head, log_p_tail, idx
            )
        else:  # the bucket's tail target p_tail q_j / q_tail follows the student's q
            n, n_entries = idx.shape[0], idx.shape[1]
            p_tail = log_p_tail.exp()
            neg_entropy = (p_head * log_p_head).sum(dim=-1) + p_tail * log_p_tail  # (n, E)
            target = _Target(
                neg_entropy.mean(dim=1),
                weight_classes=idx.reshape(n, -1),
                weight=(p_head / n_entries).reshape(n, -1),
                bucket_of=idx,
                bucket_mass=p_tail,
            )
    elif isinstance(targets, SampledTargets):
        if not math.isclose(temperature, targets.temperature, rel_tol=1e-9):
            raise ValueError(
                f"sampled targets were drawn at temperature {targets.temperature:g}; they "
                f"give an unbiased gradient only there, not at {temperature:g}"
            )
        idx = targets.indices[:, entries]  # (n, E, s)
        w = targets.counts[:, entries] / targets.draws  # (n, E, s), rows sum to 1
        n, n_entries = idx.shape[0], idx.shape[1]
        target = _Target(
            torch.xlogy(w, w).sum(dim=-1).mean(dim=1),
            weight_classes=idx.reshape(n, -1),
            weight=(w / n_entries).reshape(n, -1),
        )
    else:
        raise TypeError(
            f"targets must be TopKTargets or SampledTargets, got {type(targets).__name__}"
        )
    return _soft_plus_hard(
        z, y, target, temperature=temperature, alpha=alpha, labels_checked=labels_checked
    )
