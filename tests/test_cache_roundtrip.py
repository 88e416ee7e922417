"""Logit cache: what goes in comes back out, for every backend, dtype, input and teacher kind."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

from kdpipe.cache import LogitCache, build_cache

N, D, C = 300, 6, 4


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, C, N)
    y[::7] = -1
    return X, y


def linear(seed: int, d: int = D, c: int = C) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(d, c)


def torch_logits(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(X)).numpy()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_keeps_members_apart(tmp_path, backend, dtype, data):
    X, y = data
    members = [linear(0), linear(1), linear(2)]
    cache = build_cache(
        members,
        X,
        tmp_path / "c",
        y=y,
        backend=backend,
        dtype=dtype,
        chunk_rows=64,
        batch_size=24,
        progress=False,
    )
    expected = np.stack([torch_logits(m, X) for m in members], axis=1)  # (n, M, C)
    got = np.asarray(cache)
    assert got.dtype == np.float32 and got.shape == (N, 3, C)
    if dtype == "float32":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_array_equal(got, expected.astype(np.float16).astype(np.float32))
    reopened = LogitCache.open(tmp_path / "c")
    assert (len(reopened), reopened.n_members, reopened.n_classes) == (N, 3, C)
    np.testing.assert_array_equal(reopened.labels, y)
    np.testing.assert_array_equal(reopened.classes, np.arange(C))
    np.testing.assert_array_equal(reopened.logits.compute(), got)
    info = reopened.info()
    assert info["dtype"] == dtype and info["backend"] == backend and info["complete"]
    assert info["complete_chunks"] == info["n_chunks"] == 5
    assert info["bytes_on_disk"] > N * 3 * C * np.dtype(dtype).itemsize


def test_all_unlabeled_and_dataset_labels(tmp_path):
    X = np.random.default_rng(1).normal(size=(50, D)).astype(np.float32)
    unlabeled = build_cache(linear(0), X, tmp_path / "u", chunk_rows=16, progress=False)
    np.testing.assert_array_equal(unlabeled.labels, np.full(50, -1))
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.arange(50) % 3 - 1)
    cache = build_cache(
        linear(0), dataset, tmp_path / "d", chunk_rows=16, progress=False, classes=[0, 1, 2, 3]
    )
    np.testing.assert_array_equal(cache.labels, np.arange(50) % 3 - 1)
    np.testing.assert_array_equal(np.asarray(cache), np.asarray(unlabeled))


def test_string_classes_and_label_encoding(tmp_path, data):
    X, _ = data
    names = np.array(["ant", "bee", "cat", "dog"])
    y = np.array(["cat", "ant", -1, "dog"] * (N // 4), dtype=object)
    cache = build_cache(
        linear(0), X, tmp_path / "c", y=y, classes=names, chunk_rows=64, progress=False
    )
    np.testing.assert_array_equal(LogitCache.open(tmp_path / "c").classes, names)
    np.testing.assert_array_equal(cache.labels[:4], [2, 0, -1, 3])


def test_every_teacher_kind(tmp_path, data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    X, _ = data
    y = np.arange(N) % C
    module = linear(3)
    script = tmp_path / "teacher.pt"
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # torch.jit is deprecated in torch >= 2.10
        torch.jit.trace(module, torch.zeros(1, D)).save(str(script))
    logreg = LogisticRegression(max_iter=200).fit(X, y)  # decision_function
    bayes = GaussianNB().fit(X, y)  # predict_proba only
    W = np.random.default_rng(2).normal(size=(D, C)).astype(np.float32)

    def plain(batch):
        return batch @ W

    cache = build_cache(
        [module, str(script), logreg, bayes, plain],
        X,
        tmp_path / "c",
        chunk_rows=100,
        progress=False,
    )
    got = np.asarray(cache)
    np.testing.assert_allclose(got[:, 0], torch_logits(module, X), rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], torch_logits(module, X), rtol=1e-6)
    np.testing.assert_allclose(got[:, 2], logreg.decision_function(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        got[:, 3],
        np.log(np.maximum(bayes.predict_proba(X), np.finfo(np.float32).tiny)),
        rtol=1e-5,
        atol=1e-4,
    )
    np.testing.assert_allclose(got[:, 4], X @ W, rtol=1e-6)
    assert [t["kind"] for t in cache.info()["teachers"]] == [
        "torch",
        "torchscript",
        "sklearn",
        "sklearn",
        "callable",
    ]
    assert cache.info()["teachers"][4]["fingerprint"].startswith(
        "code:"
    )  # hashed through its code and W


def test_binary_decision_function_becomes_two_columns(tmp_path, data):
    from sklearn.svm import LinearSVC

    X, _ = data
    y = np.where(X[:, 0] > 0, "yes", "no")
    svc = LinearSVC().fit(X, y)
    cache = build_cache(svc, X, tmp_path / "c", y=y, chunk_rows=128, progress=False)
    got = np.asarray(cache)[:, 0]
    d = svc.decision_function(X)
    np.testing.assert_allclose(got, np.stack([-d / 2, d / 2], axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cache.classes, ["no", "yes"])
    proba = np.asarray(cache.soft_targets(1.0))
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-d)), rtol=1e-4)


def test_sklearn_members_with_permuted_classes_are_aligned(tmp_path, data):
    from sklearn.linear_model import LogisticRegression

    X, _ = data
    y = np.arange(N) % 3
    a = LogisticRegression().fit(X, y)
    b = LogisticRegression().fit(X, y)
    b.classes_ = b.classes_[::-1].copy()
    b.coef_, b.intercept_ = b.coef_[::-1].copy(), b.intercept_[::-1].copy()
    got = np.asarray(build_cache([a, b], X, tmp_path / "c", chunk_rows=128, progress=False))
    np.testing.assert_allclose(got[:, 0], got[:, 1], rtol=1e-6)


@pytest.mark.parametrize("kind", ["zarr", "h5py", "dask", "memmap"])
def test_array_inputs_read_chunk_by_chunk(tmp_path, data, kind):
    X, _ = data
    if kind == "zarr":
        import zarr

        source = zarr.create_array(
            tmp_path / "x.zarr", shape=X.shape, chunks=(50, D), dtype="float32"
        )
        source[:] = X
    elif kind == "h5py":
        import h5py

        f = h5py.File(tmp_path / "x.h5", "w")
        f["x"] = X
        source = f["x"]
    elif kind == "dask":
        import dask.array as da

        source = da.from_array(X, chunks=(70, D))
    else:
        np.save(tmp_path / "x.npy", X)
        source = np.load(tmp_path / "x.npy", mmap_mode="r")
    cache = build_cache(linear(0), source, tmp_path / "c", chunk_rows=64, progress=False)
    np.testing.assert_array_equal(np.asarray(cache)[:, 0], torch_logits(linear(0), X))
    if kind == "h5py":
        f.close()


def test_progress_bar_reports_rows(tmp_path, data, capsys):
    X, _ = data
    build_cache(linear(0), X, tmp_path / "c", chunk_rows=64, progress=True)
    assert "300/300" in capsys.readouterr().err
    build_cache(linear(0), X, tmp_path / "d", chunk_rows=64, progress=False)
    assert capsys.readouterr().err == ""


def test_command_line_build_info_verify(tmp_path, data, capsys):
    import joblib
    from sklearn.linear_model import LogisticRegression

    from kdpipe.cli import main

    X, y = data
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    joblib.dump(LogisticRegression(max_iter=200).fit(X, np.arange(N) % C), tmp_path / "t.joblib")
    out = tmp_path / "cache"
    argv = [
        "build-cache",
        str(tmp_path / "t.joblib"),
        "--data",
        str(tmp_path / "x.npy"),
        "--labels",
        str(tmp_path / "y.npy"),
        "-o",
        str(out),
        "--chunk-rows",
        "64",
        "--quiet",
        "--backend",
        "hdf5",
        "--dtype",
        "float16",
        "--trust-pickled-teachers",
    ]  # a file this test wrote
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["rows"], info["members"], info["dtype"], info["backend"]) == (
        N,
        1,
        "float16",
        "hdf5",
    )
    assert main(["verify", str(out)]) == 0
    (out / "hdf5" / "000002.h5").unlink()
    assert main(["verify", str(out)]) == 1
    assert "missing" in capsys.readouterr().out


@pytest.mark.gpu
def test_gpu_build_runs_the_model_precision_unless_told(tmp_path, data):
    X, y = data
    members = [linear(0), linear(1)]
    cpu = build_cache(
        members, X, tmp_path / "cpu", y=y, device="cpu", chunk_rows=64, progress=False
    )
    gpu = build_cache(
        members, X, tmp_path / "gpu", y=y, device="cuda", chunk_rows=64, progress=False
    )
    np.testing.assert_allclose(
        np.asarray(gpu), np.asarray(cpu), rtol=1e-5, atol=1e-5
    )  # float32, no autocast
    half = build_cache(
        members,
        X,
        tmp_path / "half",
        y=y,
        device="cuda",
        chunk_rows=64,
        progress=False,
        precision="float16",
    )
    assert half.manifest.build == {**gpu.manifest.build, "precision": "float16"}
    with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16):
        expected = [
            m.cuda()(torch.from_numpy(X).cuda()).float().cpu().numpy()
            for m in map(copy.deepcopy, members)
        ]
    np.testing.assert_allclose(
        np.asarray(half), np.stack(expected, axis=1), rtol=1e-3, atol=1e-3
    )  # batch sizes differ
    assert not np.array_equal(np.asarray(half), np.asarray(gpu))
    assert all(
        p.device.type == "cpu" for m in members for p in m.parameters()
    )  # caller's modules untouched
