"""Audit tests: cache build/manifest/verify, specialists, bias offsets, DistilledClassifier state.

Each test pins one documented behaviour against a reference written here (numpy, scipy,
hand-computed values), never against the library's own outputs recombined.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp, softmax

from kdpipe.bias import fit_offsets
from kdpipe.specialists.inference import combine_distributions
from kdpipe.specialists.plan import plan_specialist
from kdpipe.specialists.training import Specialist, sample_rows

torch.set_num_threads(1)


# ---------------------------------------------------------------- bias.fit_offsets
def _reference_offsets(logits, codes, classes, offsets, metric, search_range, step, n_passes):
    """Coordinate search as documented: grid [-R, R], ties by log-loss then smallest |b|."""
    logits = np.asarray(logits, dtype=np.float64)
    n_grid = round(2 * search_range / step) + 1
    grid = np.round(np.linspace(-search_range, search_range, n_grid), 9)
    out = np.array(offsets, dtype=np.float64)
    rows = np.arange(len(codes))
    for _ in range(n_passes):
        for k in classes:
            best = None
            for b in grid:
                trial = out.copy()
                trial[k] = b
                z = logits + trial
                acc = np.mean(z.argmax(axis=1) == codes)
                ll = -log_softmax(z, axis=1)[rows, codes].mean()
                key = (-acc, ll, abs(b)) if metric == "accuracy" else (ll, abs(b))
                if best is None or key < best[0]:
                    best = (key, b)
            out[k] = best[1]
    return out


@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_fit_offsets_matches_a_brute_force_coordinate_search(metric):
    rng = np.random.default_rng(3)
    n, c = 120, 4
    codes = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[codes]
    logits[:, 2] -= 1.0  # class 2 is under-predicted: its offset must move
    start = np.array([0.0, 0.7, 0.0, -0.4])  # class 1 keeps its offset and it counts
    got = fit_offsets(
        logits, codes, [2, 3], offsets=start, metric=metric, search_range=3.0, step=0.1
    )
    want = _reference_offsets(logits, codes, [2, 3], start, metric, 3.0, 0.1, n_passes=2)
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert got[1] == 0.7 and got[0] == 0.0


def test_fit_offsets_second_pass_sees_the_other_classes_new_offsets():
    # two classes whose best offsets interact: one pass of coordinate ascent is not enough
    rng = np.random.default_rng(11)
    n, c = 200, 3
    codes = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[codes]
    logits[:, 0] -= 2.0
    logits[:, 1] -= 2.0
    got = fit_offsets(logits, codes, [0, 1], metric="log_loss", search_range=4.0, step=0.05)
    want = _reference_offsets(logits, codes, [0, 1], np.zeros(c), "log_loss", 4.0, 0.05, 2)
    one_pass = _reference_offsets(logits, codes, [0, 1], np.zeros(c), "log_loss", 4.0, 0.05, 1)
    assert not np.allclose(want, one_pass)  # the test can tell the passes apart
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_fit_offsets_can_reach_the_end_of_the_search_range():
    # every row belongs to class 1: its log-loss falls all the way to +search_range
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 3))
    codes = np.ones(50, dtype=np.int64)
    got = fit_offsets(logits, codes, [1], metric="log_loss", search_range=2.0, step=0.05)
    assert got[1] == pytest.approx(2.0, abs=1e-12)


def test_fit_offsets_keeps_zero_when_no_offset_changes_anything():
    # class 2 is so unlikely that no offset in range changes accuracy or log-loss:
    # the documented tie-break picks the smallest |offset|, 0
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 3))
    logits[:, 2] = -1000.0
    codes = rng.integers(0, 2, size=40)
    for metric in ("accuracy", "log_loss"):
        got = fit_offsets(logits, codes, [2], metric=metric)
        assert got[2] == 0.0


# ---------------------------------------------------------------- combine_distributions
def _reference_combination(p_g, p_m, subsets, active, full):
    """argmin_z KL(p_g || q) + sum over active m of KL(p_m || Q_m(q)), by scipy, per row."""
    n, c = p_g.shape
    out = np.empty_like(p_g)
    for i in range(n):
        members = [m for m in range(len(p_m)) if active[i, m]]

        def objective(z, i=i, members=members):
            log_q = z - logsumexp(z)
            f = -(p_g[i] * log_q).sum()
            for m in members:
                if full[m]:
                    f -= (p_m[m][i] * log_q).sum()
                else:
                    inside = np.asarray(subsets[m])
                    outside = np.setdiff1d(np.arange(c), inside)
                    f -= (p_m[m][i, :-1] * log_q[inside]).sum()
                    f -= p_m[m][i, -1] * logsumexp(log_q[outside])
            return f

        z = minimize(objective, np.log(p_g[i]), method="BFGS", options={"gtol": 1e-10}).x
        out[i] = softmax(z)
    return out


def _random_rows(rng, n, c):
    return softmax(rng.normal(scale=2.0, size=(n, c)), axis=1)


@pytest.mark.parametrize("step", [1.0, 0.5])
def test_combination_ignores_whatever_inactive_rows_hold(step):
    # documented: rows where a specialist is inactive "may hold anything finite"
    rng = np.random.default_rng(5)
    n, c = 6, 7
    subsets = [np.array([0, 1, 2]), np.array([2, 3]), np.array([0, 1, 2, 3, 4, 5, 6])]
    full = [False, False, True]
    p_g = _random_rows(rng, n, c)
    p_m = [_random_rows(rng, n, 4), _random_rows(rng, n, 3), _random_rows(rng, n, c)]
    active = np.array(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=bool
    )
    res = combine_distributions(
        p_g, p_m, subsets, active, full=full, max_iter=5000, tol=1e-10, step=step
    )
    assert res.converged.all()
    np.testing.assert_array_equal(res.n_active, active.sum(axis=1))
    want = _reference_combination(p_g, p_m, subsets, active, full)
    np.testing.assert_allclose(res.proba, want, atol=2e-6)


def test_combination_never_iterates_past_max_iter():
    rng = np.random.default_rng(2)
    p_g = _random_rows(rng, 4, 6)
    subsets = [np.array([0, 1, 2]), np.array([2, 3, 4])]
    p_m = [_random_rows(rng, 4, 4), _random_rows(rng, 4, 4)]
    active = np.ones((4, 2), dtype=bool)
    for max_iter in (1, 3):
        res = combine_distributions(p_g, p_m, subsets, active, max_iter=max_iter, tol=1e-14)
        assert (res.n_iter <= max_iter).all() and (res.n_iter == max_iter).all()
        assert not res.converged.any()


# ---------------------------------------------------------------- specialist plans
def test_sample_rows_share_sets_the_outside_count_and_the_correction():
    classes = np.repeat(np.arange(5), 40)  # 40 rows per class
    subset = np.array([0])
    for share in (0.25, 0.5, 0.8):
        rows, correction = sample_rows(classes, subset, share, np.random.default_rng(0))
        n_in = 40
        n_out = min(160, max(1, round(n_in * (1 - share) / share)))
        assert len(rows) == n_in + n_out
        assert np.isin(classes[rows], subset).sum() == n_in
        # r_s = 1 (every row of the subset), r_d = n_out / 160
        assert correction == pytest.approx(np.log(1.0 / (n_out / 160)))


def test_dustbin_plan_targets_are_collapsed_logits_lowered_by_the_correction():
    rng = np.random.default_rng(4)
    n, c = 300, 6
    codes = rng.integers(0, c, size=n)
    v = rng.normal(size=(n, c))
    subset = np.array([1, 4])
    plan = plan_specialist(subset, "dustbin", codes, codes, share=0.5, rng=rng, teacher_logits=v)
    n_in = np.isin(codes, subset).sum()
    n_out = len(plan.rows) - n_in
    correction = np.log(1.0 / (n_out / (n - np.isin(codes, subset).sum())))
    assert plan.correction == pytest.approx(correction)
    outside = np.setdiff1d(np.arange(c), subset)
    vr = v[plan.rows]
    want = np.column_stack([vr[:, subset], logsumexp(vr[:, outside], axis=1) - correction])
    np.testing.assert_allclose(plan.targets, want, rtol=1e-5, atol=1e-5)
    labels = np.where(codes[plan.rows] == 1, 0, np.where(codes[plan.rows] == 4, 1, 2))
    np.testing.assert_array_equal(plan.y, labels)


def test_full_plan_targets_of_an_ensemble_are_per_member_softmaxes():
    rng = np.random.default_rng(8)
    n, m, c = 200, 3, 5
    codes = rng.integers(0, c, size=n)
    codes[::7] = -1  # some unlabeled rows keep their soft targets
    v = rng.normal(scale=2.0, size=(n, m, c))
    sampling = np.where(codes >= 0, codes, 0)
    subset = np.array([0, 2])
    plan = plan_specialist(subset, "full", sampling, codes, share=0.5, rng=rng, teacher_logits=v)
    p = np.exp(v[plan.rows] - logsumexp(v[plan.rows], axis=2, keepdims=True))  # (r, M, C)
    rc = codes[plan.rows]
    for i, code in enumerate(rc):  # section 6.1: the subset's mass moves to the true class
        if code in subset:
            mass = p[i][:, subset].sum(axis=1)
            p[i][:, subset] = 0.0
            p[i][:, code] = mass
    want = np.log(np.clip(p, 1e-30, None))
    outside = np.setdiff1d(np.arange(c), subset)
    want[..., outside] -= plan.correction
    assert plan.targets.shape == (len(plan.rows), m, c)
    finite = want > -30
    np.testing.assert_allclose(plan.targets[finite], want[finite], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(plan.y, rc)


# ---------------------------------------------------------------- estimator inference
class _FixedGeneralist:
    """A 'fitted' generalist whose probabilities are the softmax of the row itself."""

    classes_ = np.arange(6)

    def predict_proba(self, X):
        return softmax(np.asarray(X, dtype=np.float64), axis=1)


def _constant_specialist(subset, out_logits):
    layer = torch.nn.Linear(6, len(out_logits))
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(out_logits, dtype=torch.float32))
    return Specialist(np.asarray(subset, dtype=np.intp), "dustbin", layer, 0.0, 10)


def _stub_ensemble(top_n):
    from kdpipe import SpecialistEnsembleClassifier

    est = SpecialistEnsembleClassifier(top_n=top_n, device="cpu")
    est.generalist_ = _FixedGeneralist()
    est.classes_ = np.arange(6)
    est.n_features_in_ = 6
    est.sample_shape_ = (6,)
    est.clusters_ = [np.array([0, 1]), np.array([2, 3]), np.array([4])]
    est.specialists_ = [
        _constant_specialist([0, 1], [0.5, -0.5, 0.0]),
        _constant_specialist([2, 3], [1.0, 0.0, -1.0]),
        _constant_specialist([4], [0.3, 0.0]),
    ]
    return est


@pytest.mark.parametrize("top_n", [1, 2, 3])
def test_active_specialists_are_those_covering_the_generalists_top_n(top_n):
    rng = np.random.default_rng(9)
    X = rng.normal(scale=2.0, size=(40, 6)).astype(np.float32)
    est = _stub_ensemble(top_n)
    res = est.inference_details(X)
    p_g = softmax(X.astype(np.float64), axis=1)
    subsets = [{0, 1}, {2, 3}, {4}]
    for i in range(len(X)):
        top = set(np.argsort(-p_g[i])[:top_n].tolist())
        want = sum(bool(top & s) for s in subsets)
        assert res.n_active[i] == want, (i, top)
        if want == 0:  # nothing active: the generalist exactly
            np.testing.assert_array_equal(res.proba[i], p_g[i])


# ---------------------------------------------------------------- cache: verify and manifest
_N, _D, _C, _ROWS = 50, 4, 3, 10  # 5 chunks of 10 rows


class _Linear:
    kdpipe_fingerprint = "audit-linear-v1"

    def __init__(self):
        self.W = np.random.default_rng(1).normal(size=(_D, _C)).astype(np.float32)

    def __call__(self, batch):
        return batch @ self.W


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(_N, _D)).astype(np.float32)


def _build(X, path, teacher=None, **kw):
    from kdpipe.cache import build_cache

    kw.setdefault("y", np.arange(_N) % _C)
    return build_cache(
        teacher or _Linear(),
        X,
        path,
        chunk_rows=_ROWS,
        batch_size=5,
        progress=False,
        num_workers=1,
        **kw,
    )


def _edit_manifest(path, edit, *, drop_copy=True):
    if drop_copy:  # a cache without its initial copy: check_manifest alone must catch it
        (path / "manifest.initial.json").unlink()
    data = json.loads((path / "manifest.json").read_text())
    edit(data)
    (path / "manifest.json").write_text(json.dumps(data))


def _flip(file, offset=3):
    raw = bytearray(file.read_bytes())
    raw[offset] ^= 0x21
    file.write_bytes(bytes(raw))


def test_verify_checks_the_last_chunk_and_the_labels(tmp_path, X):
    from kdpipe.cache import LogitCache

    path = tmp_path / "c"
    _build(X, path)
    _flip(path / "logits.zarr" / "logits" / "c" / "4" / "0" / "0")  # the last chunk
    _flip(path / "logits.zarr" / "labels" / "c" / "2")  # labels of chunk 2 only
    report = LogitCache.open(path, chunk_cache_bytes=0).verify()
    assert report.status == "FAILED" and not report.ok
    assert report.corrupt == (2, 4) and report.n_verified == 3 and report.n_complete == 5


def test_verify_of_an_unfinalized_cache_is_incomplete_not_ok(tmp_path, X):
    from kdpipe.cache import LogitCache

    path = tmp_path / "c"
    _build(X, path)

    def unfinish(m):
        m.update(complete=False, chunks=[], finished=None, data_fingerprint=None)

    _edit_manifest(path, unfinish, drop_copy=False)  # every chunk written, none lost
    report = LogitCache.open(path, allow_incomplete=True).verify()
    assert not report.ok and report.status == "INCOMPLETE" and not report.finished
    assert report.n_complete == 5 and report.n_verified == 5 and report.incomplete == ()


@pytest.mark.parametrize(
    "field, edit",
    [
        ("chunk_rows", lambda m: m.update(chunk_rows=0)),
        ("n_rows", lambda m: m.update(data_shape=[_N + 1, _D])),
        ("classes", lambda m: m["classes"].update(values=[0, 1, 1])),
        ("teachers", lambda m: m.update(teachers=[])),
        ("chunks", lambda m: m.update(chunks=m["chunks"][:-1])),
        ("chunks", lambda m: m["chunks"][1].update(index=2)),
        ("chunks", lambda m: m["chunks"][4].update(stop=_N + 3)),
        ("chunks", lambda m: m["chunks"][0].update(data_sha256=None)),
        ("chunks", lambda m: m.update(complete=False, finished=None)),
    ],
)
def test_a_nonsense_manifest_field_is_refused_naming_it(tmp_path, X, field, edit):
    from kdpipe.cache import LogitCache
    from kdpipe.errors import CacheCorruptError

    path = tmp_path / "c"
    _build(X, path)
    _edit_manifest(path, edit)
    with pytest.raises(CacheCorruptError, match=field):
        LogitCache.open(path, allow_incomplete=True)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["classes"].update(values=[0, 1, 7]),  # one setting, no stored shape changes
        lambda m: m["build"].update(batch_size=7),
        lambda m: m["build"].pop("batch_size"),  # a key only the initial copy has
    ],
)
def test_a_manifest_edited_after_the_build_disagrees_with_its_initial_copy(tmp_path, X, edit):
    from kdpipe.cache import LogitCache
    from kdpipe.errors import CacheCorruptError

    path = tmp_path / "c"
    _build(X, path)
    _edit_manifest(path, edit, drop_copy=False)
    with pytest.raises(CacheCorruptError, match="initial"):
        LogitCache.open(path)


def test_a_manifest_rewritten_during_the_build_is_not_returned_as_the_builds(
    tmp_path, X, monkeypatch
):
    # another writer that ignores the lock rewrites manifest.json between the build's
    # last write and its reopening: the build must not hand back that cache as its own
    import kdpipe.cache.build as build_module
    from kdpipe.cache import LogitCache
    from kdpipe.errors import CacheCorruptError

    path = tmp_path / "c"
    real_open = LogitCache.open

    def open_after_a_foreign_write(where, *a, **kw):
        data = json.loads((path / "manifest.json").read_text())
        data["finished"] = "1999-01-01T00:00:00+00:00"
        (path / "manifest.json").write_text(json.dumps(data))
        return real_open(where, *a, **kw)

    monkeypatch.setattr(build_module.LogitCache, "open", open_after_a_foreign_write)
    with pytest.raises(CacheCorruptError, match="changed while this build held its lock"):
        _build(X, path)


# ---------------------------------------------------------------- DistilledClassifier
def test_warm_start_continues_from_the_fitted_weights():
    from kdpipe import DistilledClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4)).astype(np.float32)
    y = np.argmax(X[:, :3], axis=1)
    params = dict(hidden_layer_sizes=(8,), max_epochs=2, batch_size=32, random_state=0)
    clf = DistilledClassifier(warm_start=True, learning_rate=5e-2, device="cpu", **params)
    clf.fit(X, y)
    trained = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    clf.set_params(learning_rate=1e-12, max_epochs=1)  # a second fit that barely moves
    clf.fit(X, y)
    for name, value in clf.module_.state_dict().items():
        torch.testing.assert_close(value, trained[name], atol=1e-6, rtol=0)


def _unfinish(path):
    def edit(m):
        m.update(complete=False, chunks=[], finished=None, data_fingerprint=None)

    _edit_manifest(path, edit, drop_copy=False)


@pytest.mark.parametrize(
    "name, edit",
    [
        ("000002.json", lambda r: r.update(stop=r["stop"] - 3)),  # wrong rows for chunk 2
        ("000003.json", lambda r: r.update(index=2)),  # names another chunk
        ("000009.json", lambda r: r.update(index=9, start=90, stop=100)),  # beyond the end
    ],
)
def test_resume_recomputes_a_chunk_whose_record_does_not_fit_it(tmp_path, X, name, edit):
    from kdpipe.cache import LogitCache

    path = tmp_path / "c"
    teacher = _Linear()
    _build(X, path)
    _unfinish(path)  # an interrupted build: done/ records are the truth
    record = json.loads((path / "done" / "000004.json").read_text())
    if name != "000009.json":
        record = json.loads((path / "done" / name).read_text())
    edit(record)
    (path / "done" / name).write_text(json.dumps(record))
    cache = _build(X, path)
    assert cache.verify().ok
    np.testing.assert_allclose(np.asarray(cache)[:, 0], X @ teacher.W, rtol=1e-6)
    reopened = LogitCache.open(path)
    assert [(r.start, r.stop) for r in reopened.manifest.chunks] == [
        (i, min(i + _ROWS, _N)) for i in range(0, _N, _ROWS)
    ]


def test_a_finished_cache_under_repair_is_not_claimed_finished(tmp_path, X):
    # a resume that recomputes a damaged chunk of a finished cache and dies first must
    # leave a cache that says it is unfinished, not a finished one holding a bad chunk
    from kdpipe.cache import LogitCache
    from kdpipe.errors import CacheIncompleteError

    path = tmp_path / "c"
    _build(X, path)
    _flip(path / "logits.zarr" / "logits" / "c" / "1" / "0" / "0")

    class Crashing(_Linear):
        def __call__(self, batch):
            raise RuntimeError("teacher crashed")

    with pytest.raises(RuntimeError, match="teacher crashed"):
        _build(X, path, teacher=Crashing())
    with pytest.raises(CacheIncompleteError):
        LogitCache.open(path)
    assert LogitCache.open(path, allow_incomplete=True).verify().status == "INCOMPLETE"


def test_resume_refuses_a_format_1_cache(tmp_path, X):
    from kdpipe.errors import CacheMismatchError

    path = tmp_path / "c"
    _build(X, path)
    for name in ("manifest.json", "manifest.initial.json"):
        data = json.loads((path / name).read_text())
        data["format_version"] = 1
        (path / name).write_text(json.dumps(data))
    with pytest.raises(CacheMismatchError, match="format version 1"):
        _build(X, path)


# ---------------------------------------------------------------- specialist initialization
@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_specialist_initial_output_layer_is_the_shifted_collapsed_generalist(shift):
    from kdpipe.specialists.training import init_specialist_module

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 5))
    X = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    W1, b1 = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    W2, b2 = net[2].weight.detach().double().numpy(), net[2].bias.detach().double().numpy()
    h = np.maximum(X @ W1.T + b1, 0.0)
    z = h @ W2.T + b2  # (n, 5) the generalist's logits
    subset, outside = np.array([1, 3]), np.array([0, 2, 4])

    full = init_specialist_module(net, subset, "full", X, shift)
    with torch.no_grad():
        z_full = full(torch.from_numpy(X)).double().numpy()
    want = z.copy()
    want[:, outside] += shift
    np.testing.assert_allclose(z_full, want, atol=1e-4)

    dust = init_specialist_module(net, subset, "dustbin", X, shift)
    with torch.no_grad():
        z_dust = dust(torch.from_numpy(X)).double().numpy()
    design = np.column_stack([h, np.ones(len(h))])
    coef = np.linalg.lstsq(design, logsumexp(z[:, outside], axis=1), rcond=None)[0]
    np.testing.assert_allclose(z_dust[:, :2], z[:, subset], atol=1e-4)
    np.testing.assert_allclose(z_dust[:, 2], design @ coef + shift, atol=1e-3)
    # the generalist itself is left untouched
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(X)).double().numpy(), z, atol=1e-5)


@pytest.mark.parametrize("kind", ["dustbin", "full"])
def test_an_untrained_specialist_predicts_the_generalist_at_natural_rates(kind):
    # the sampling correction is subtracted at initialization and added back after
    # training: with (almost) no training the two cancel and the specialist is the
    # generalist collapsed onto its subset (dustbin) or the generalist itself (full)
    from kdpipe.engine import TrainingConfig
    from kdpipe.specialists.training import fit_specialist

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 5))
    X = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    codes = np.random.default_rng(1).integers(0, 5, size=300)
    subset, outside = np.array([1, 3]), np.array([0, 2, 4])
    y = codes if kind == "full" else np.where(np.isin(codes, subset), codes // 2, 2)
    config = TrainingConfig(loss="hard", learning_rate=1e-12, max_epochs=1, device="cpu")
    correction = 1.2
    spec = fit_specialist(net, X, np.arange(300), y, None, subset, kind, correction, config, seed=0)
    with torch.no_grad():
        z_spec = spec.module(torch.from_numpy(X)).double().numpy()
    W1, b1 = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    W2, b2 = net[2].weight.detach().double().numpy(), net[2].bias.detach().double().numpy()
    h = np.maximum(X @ W1.T + b1, 0.0)
    z = h @ W2.T + b2
    if kind == "full":
        np.testing.assert_allclose(z_spec, z, atol=1e-4)
    else:
        design = np.column_stack([h, np.ones(len(h))])
        coef = np.linalg.lstsq(design, logsumexp(z[:, outside], axis=1), rcond=None)[0]
        np.testing.assert_allclose(z_spec[:, :2], z[:, subset], atol=1e-4)
        np.testing.assert_allclose(z_spec[:, 2], design @ coef, atol=1e-3)


def test_unlabeled_rows_are_sampled_by_the_teachers_class_in_fit():
    # documented: "Unlabeled rows count, for sampling, as the teacher's most probable class"
    from kdpipe import DistilledClassifier, SpecialistEnsembleClassifier

    rng = np.random.default_rng(0)
    n, c = 120, 4
    X = rng.normal(size=(n, 5)).astype(np.float32)
    truth = rng.integers(0, c, size=n)
    logits = (4.0 * np.eye(c)[truth] + rng.normal(scale=0.3, size=(n, c))).astype(np.float32)
    y = truth.copy()
    y[1::2] = -1  # half the rows unlabeled
    share = 0.25
    est = SpecialistEnsembleClassifier(
        DistilledClassifier(hidden_layer_sizes=(4,), max_epochs=1, device="cpu"),
        class_subsets=[[0], [1, 2]],
        subset_share=share,
        specialist_max_epochs=1,
        device="cpu",
        random_state=0,
    ).fit(X, y, teacher_logits=logits)
    counts_as = np.where(y >= 0, y, logits.argmax(axis=1))
    for spec, subset in zip(est.specialists_, ([0], [1, 2])):
        n_in = int(np.isin(counts_as, subset).sum())
        n_out = min(n - n_in, max(1, round(n_in * (1 - share) / share)))
        assert spec.n_rows == n_in + n_out
        assert spec.correction == pytest.approx(np.log((n - n_in) / n_out))


def test_class_subsets_with_a_repeated_label_are_refused():
    # documented: each subset holds 1 to C - 1 *distinct* labels
    from kdpipe.errors import InputError
    from kdpipe.specialists.clustering import parse_class_subsets

    classes = np.array(["a", "b", "c", "d"])
    with pytest.raises(InputError, match="distinct"):
        parse_class_subsets([["a", "b"], ["c", "c"]], classes)
    np.testing.assert_array_equal(parse_class_subsets([["c", "a"]], classes)[0], [0, 2])


def test_float16_overflow_names_the_offending_rows(tmp_path, X):
    from kdpipe.errors import TeacherOutputError

    class Huge(_Linear):
        def __call__(self, batch):
            out = batch @ self.W
            out[np.isin(batch[:, 0], X[[23], 0]), 2] = 1e6  # beyond float16, row 23 only
            return out

    with pytest.raises(TeacherOutputError, match=r"float16 range for rows 23 \(1 rows\)"):
        _build(X, tmp_path / "c", teacher=Huge(), dtype="float16")


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_an_overwrite_killed_while_it_clears_the_old_cache_leaves_no_cache(tmp_path, crash_at):
    """The manifest is deleted first: a crash anywhere in the clearing leaves the old cache
    whole or a folder that no reader takes for a cache (never a finished manifest over
    deleted chunks), and a build finishes it."""
    from kdpipe.cache import LogitCache, build_cache
    from kdpipe.cache.durable import set_write_hook
    from kdpipe.errors import CacheNotFoundError

    class Crash(Exception):
        pass

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3)).astype(np.float32)
    W = rng.normal(size=(3, 4)).astype(np.float32)

    def teacher(batch):
        return batch @ W

    teacher.kdpipe_fingerprint = "clearing-linear"
    path = tmp_path / "c"
    build_cache(teacher, X, path, chunk_rows=10, progress=False)
    seen = []

    def hook(step: str, where: str) -> None:
        if step == "unlink":
            seen.append(where)
            if len(seen) == crash_at:
                raise Crash(where)

    previous = set_write_hook(hook)
    try:
        with pytest.raises(Crash):
            build_cache(teacher, X, path, chunk_rows=10, progress=False, overwrite=True)
    finally:
        set_write_hook(previous)
    assert seen[0].endswith("manifest.json")
    if crash_at == 1:  # killed before the first deletion: the old cache, whole
        assert LogitCache.open(path).verify().ok
    else:
        with pytest.raises(CacheNotFoundError):
            LogitCache.open(path)
    rebuilt = build_cache(teacher, X, path, chunk_rows=10, progress=False, resume=True)
    assert rebuilt.verify().ok
    np.testing.assert_allclose(np.asarray(rebuilt)[:, 0], X @ W, rtol=1e-6)
