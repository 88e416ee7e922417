"""Combining the generalist with its active specialists (Hinton et al. 2015, section 5.4).

For one example, with the generalist's distribution ``p^g`` over ``C`` classes and the
active specialists' distributions ``p^m`` over their subset ``S_m`` plus a dustbin,
the full distribution ``q = softmax(z)`` minimizes

    F(z) = KL(p^g || q) + sum_m KL(p^m || Q_m(q)),

where ``Q_m(q) = [q_S_m, q(outside S_m)]`` is ``q`` collapsed onto the specialist's
classes and dustbin. A full-softmax specialist has ``Q_m(q) = q``. Up to constants,
``F = -sum_A w_A log q(A)``: a weighted log-likelihood of *sets* of classes, with
singleton sets ``{c}`` weighted by ``p^g_c + sum_m p^m_c`` and each dustbin set
``outside S_m`` weighted by the dustbin probability ``p^m_d``. Its gradient is

    dF/dz_c = W q_c - u_c,   u_c = w_c + q_c sum_m p^m_d [c not in S_m] / q(outside S_m),

with ``W = 1 + (number of active specialists)``, the total weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["InferenceResult", "combine_distributions"]

_TINY = 1e-300


@dataclass(frozen=True)
class InferenceResult:
    """The combined distributions and how the per-example optimization went.

    Attributes
    ----------
    proba : ndarray of shape (n, C)
        The optimal ``q`` per example (the generalist's ``p^g`` where no specialist
        is active).
    n_iter : ndarray of shape (n,), int
        Iterations each example took (0 with no active specialist).
    converged : ndarray of shape (n,), bool
        Whether ``max_c |dF/dz_c| <= tol`` was reached within ``max_iter``.
    grad_norm : ndarray of shape (n,)
        Final ``max_c |dF/dz_c|`` (0 with no active specialist).
    n_active : ndarray of shape (n,), int
        Number of active specialists of each example.
    """

    proba: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    grad_norm: np.ndarray
    n_active: np.ndarray


def _weights(
    p_g: torch.Tensor,  # (b, C)
    p_m: list[torch.Tensor],  # M x (b, k_m + 1) or (b, C) for full members
    subsets: list[torch.Tensor],  # M x (k_m,) codes
    full: list[bool],
    active: torch.Tensor,  # (b, M) bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Singleton weights ``(b, C)``, dustbin weights ``(b, M)``, total weight ``(b,)``."""
    w = p_g.clone()
    dust = torch.zeros(active.shape, dtype=p_g.dtype)
    for m, (pm, subset) in enumerate(zip(p_m, subsets)):
        a = active[:, m : m + 1].to(p_g.dtype)  # (b, 1)
        if full[m]:
            w += a * pm
        else:
            w[:, subset] += a * pm[:, :-1]
            dust[:, m] = a[:, 0] * pm[:, -1]
    return w, dust, 1.0 + active.sum(dim=1).to(p_g.dtype)


def _gradient(
    q: torch.Tensor,
    w: torch.Tensor,
    dust: torch.Tensor,
    total: torch.Tensor,
    outside: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dF/dz, u)``, both ``(b, C)``; ``outside`` is the ``(M, C)`` dustbin mask."""
    q_out = (q @ outside.T).clamp_min(_TINY)  # (b, M): q(outside S_m)
    u = w + q * ((dust / q_out) @ outside)  # (b, C)
    return total[:, None] * q - u, u


def combine_distributions(
    p_g: np.ndarray,
    p_m: list[np.ndarray],
    subsets: list[np.ndarray],
    active: np.ndarray,
    *,
    full: list[bool] | None = None,
    max_iter: int = 200,
    tol: float = 1e-6,
    step: float = 1.0,
) -> InferenceResult:
    """Minimize ``KL(p^g || q) + sum_m KL(p^m || Q_m(q))`` for every example.

    Parameters
    ----------
    p_g : ndarray of shape (n, C)
        The generalist's distributions.
    p_m : list of ndarray
        One per specialist: ``(n, k_m + 1)`` (subset classes in the order of
        ``subsets[m]``, then the dustbin) or ``(n, C)`` for a full-softmax member.
        Rows where the specialist is inactive are ignored (may hold anything finite).
    subsets : list of ndarray of int
        Class codes of each specialist's subset.
    active : ndarray of shape (n, M), bool
        Which specialists take part in each example.
    full : list of bool, optional
        Which members have a full softmax (default: none).
    max_iter : int, default=200
        Iterations per example at most.
    tol : float, default=1e-6
        An example has converged when ``max_c |dF/dz_c| <= tol``.
    step : float in (0, 2], default=1.0
        Step in log space, ``log q <- log q + step * log(u / (W q))``; ``1`` is the
        exact EM (majorize-minimize) update, which never increases ``F``.

    Returns
    -------
    InferenceResult

    Notes
    -----
    The objective is convex in ``q`` on the simplex, and ``z = log q`` starts at
    ``log p^g``. The update ``q <- u / W`` is the EM algorithm for a categorical
    distribution observed through sets (the dustbins hide which outer class it was);
    in ``z`` it is gradient descent preconditioned by ``1 / (W q)``, since
    ``log(u / (W q)) ~ -(dF/dz) / (W q)``. Every example is optimized on its own (no
    shared line search or curvature estimate), so its result does not depend on which
    other examples share the batch; examples drop out of the batch once converged.
    With full-softmax members only, ``u = w`` is constant and one step reaches the
    closed-form optimum, the arithmetic mean of all the distributions.
    """
    n_examples, n_classes = np.shape(p_g)
    full = [False] * len(p_m) if full is None else list(full)
    active = np.asarray(active, dtype=bool).reshape(n_examples, len(p_m))
    n_iter = np.zeros(n_examples, dtype=np.int64)
    converged = np.ones(n_examples, dtype=bool)
    grad_norm = np.zeros(n_examples)
    proba = np.array(p_g, dtype=np.float64)  # rows without specialists stay p^g exactly
    todo = np.flatnonzero(active.any(axis=1))
    if len(todo) == 0 or len(p_m) == 0:
        return InferenceResult(proba, n_iter, converged, grad_norm, active.sum(1))

    dt = torch.float64
    sub_t = [torch.as_tensor(np.asarray(s, dtype=np.int64)) for s in subsets]
    outside = torch.ones((len(p_m), n_classes), dtype=dt)  # (M, C)
    for m, subset in enumerate(sub_t):
        outside[m, subset] = 0.0
        if full[m]:
            outside[m] = 0.0
    w, dust, total = _weights(
        torch.as_tensor(proba[todo]),
        [torch.as_tensor(np.asarray(pm, dtype=np.float64)[todo]) for pm in p_m],
        sub_t,
        full,
        torch.as_tensor(active[todo]),
    )  # (b, C), (b, M), (b,)
    q = torch.as_tensor(proba[todo]).clone()  # (b, C)
    q /= q.sum(dim=1, keepdim=True)
    rows = torch.arange(len(todo))  # positions in todo still iterating
    iters = torch.zeros(len(todo), dtype=torch.int64)
    gnorm = torch.zeros(len(todo), dtype=dt)
    for _ in range(max_iter + 1):
        grad, u = _gradient(q[rows], w[rows], dust[rows], total[rows], outside)
        g = grad.abs().amax(dim=1)  # (r,)
        gnorm[rows] = g
        keep = g > tol
        rows = rows[keep]
        if len(rows) == 0 or int(iters.max()) >= max_iter:
            break
        u, q_r = u[keep], q[rows]
        target = u / total[rows, None]  # (r, C): the EM point, sums to 1
        if step == 1.0:
            q_new = target
        else:
            log_q = torch.log(q_r.clamp_min(_TINY))
            log_q = log_q + step * (torch.log(target.clamp_min(_TINY)) - log_q)
            q_new = torch.softmax(log_q, dim=1)
        q[rows] = q_new / q_new.sum(dim=1, keepdim=True)
        iters[rows] += 1
    proba[todo] = q.numpy()
    n_iter[todo] = iters.numpy()
    grad_norm[todo] = gnorm.numpy()
    converged[todo] = gnorm.numpy() <= tol
    return InferenceResult(proba, n_iter, converged, grad_norm, active.sum(axis=1))
