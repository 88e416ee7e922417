"""Smoke tests of every script in ``pipelines/`` and ``examples/``, at tiny size.

Each script runs as a user runs it (its ``main(argv)``, or ``python script.py`` in a
subprocess) on tiny data: digits from scikit-learn, and Fashion-MNIST-shaped idx files
written here. Each test checks what the script wrote, where it was asked to, and that
nothing was written into the tracked tree.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from kdpipe.cache import LogitCache

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("pipelines/*.py"), *ROOT.glob("examples/*.py")])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load(relative: str) -> ModuleType:
    """Import a script by its path, as ``python path`` would run it (minus ``__main__``)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_idx(path: Path, array: np.ndarray, *, gzipped: bool) -> None:
    """MNIST's idx format: 0, 0, type code 0x08 (uint8), ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gzipped:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory) -> Path:
    """Tiny Fashion-MNIST look-alike: class c is a bright 7x7 patch at its own place, plus noise."""
    directory = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for prefix, n, gzipped in (("train", 240, True), ("t10k", 120, False)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            r, col = 3 + 7 * (c // 4), 3 + 6 * (c % 4)
            images[i, r : r + 7, col : col + 7] += 180
        _write_idx(directory / f"{prefix}-images-idx3-ubyte", images, gzipped=gzipped)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, gzipped=gzipped)
    return directory


@pytest.fixture
def tracked_tree_unchanged():
    """Fails the test if a script changed a file under examples/ or pipelines/."""

    def snapshot() -> dict[str, str]:
        files = [p for d in ("examples", "pipelines") for p in (ROOT / d).rglob("*") if p.is_file()]
        return {
            str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files
            if "__pycache__" not in p.parts
        }

    before = snapshot()
    yield
    assert snapshot() == before


def _wrote(stdout: str) -> list[Path]:
    return [
        Path(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("wrote /")
    ]


def test_every_script_has_a_smoke_test():
    tested = {
        "pipelines/digits_cache.py",
        "pipelines/fashion_mnist_cache.py",
        "examples/digits_sweeps.py",
        "examples/fashion_mnist_distill.py",
        "examples/cluster_sweep.py",
        "examples/fashion_mnist_views.py",
        "examples/fashion_mnist_mlp_teachers.py",
    }
    assert {str(p.relative_to(ROOT)) for p in SCRIPTS} == tested


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_digits_cache_pipeline_builds_a_verified_cache(
    tmp_path, capsys, backend, tracked_tree_unchanged
):
    out = tmp_path / "digits-cache"
    argv = ["--out", str(out), "--members", "2", "--epochs", "1", "--backend", backend]
    assert _load("pipelines/digits_cache.py").main(argv) == 0
    cache = LogitCache.open(out)
    assert (len(cache), cache.n_members, cache.n_classes) == (1797, 2, 10)
    assert cache.verify().ok
    assert _wrote(capsys.readouterr().out) == [out.resolve()]


def test_fashion_cache_pipeline_with_jitter_as_a_user_runs_it(
    tmp_path, fashion_dir, tracked_tree_unchanged
):
    out = tmp_path / "fashion-cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's kdpipe, not an installed one
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pipelines/fashion_mnist_cache.py"),
            "--data-dir",
            str(fashion_dir),
            "--out",
            str(out),
            "--members",
            "2",
            "--epochs",
            "1",
            "--jitter-copies",
            "1",
            "--chunk-rows",
            "100",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    cache = LogitCache.open(out)
    assert (len(cache), cache.n_members, cache.n_classes) == (240, 2, 10)
    assert cache.verify().ok
    assert _wrote(done.stdout) == [out.resolve()]
    errors = int(done.stdout.split("ensemble test errors: ")[1].split(" / ")[0])
    assert 0 <= errors <= 120


def test_digits_sweeps_example_writes_into_its_default_folder(
    tmp_path, monkeypatch, capsys, tracked_tree_unchanged
):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    argv = [
        "--members",
        "2",
        "--teacher-epochs",
        "1",
        "--epochs",
        "2",
        "--temperatures",
        "1",
        "4",
        "--cv",
        "2",
        "--n-jobs",
        "1",
    ]
    assert _load("examples/digits_sweeps.py").main(argv) == 0
    folder = tmp_path / "kdpipe-results" / "digits_sweeps"
    names = ["digits_sweeps.json", "digits_temperature_sweep.png", "digits_accuracy_vs_members.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    assert _wrote(capsys.readouterr().out) == [folder.resolve() / n for n in names]
    results = json.loads((folder / "digits_sweeps.json").read_text())
    assert set(results["temperature_cv_accuracy"]) == {"1.0", "4.0"}
    assert results["best_temperature"] in (1.0, 4.0)
    assert list(results["accuracy_by_members"]) == ["1", "2"]
    scores = [
        results["hard_label_accuracy"],
        results["distilled_test_accuracy"],
        *results["temperature_cv_accuracy"].values(),
        *results["accuracy_by_members"].values(),
    ]
    assert all(0.0 <= s <= 1.0 for s in scores)
    for name in names[1:]:
        assert (folder / name).read_bytes()[:8] == PNG_SIGNATURE


def test_fashion_distill_example_writes_where_asked(
    tmp_path, fashion_dir, capsys, tracked_tree_unchanged
):
    pytest.importorskip("matplotlib")
    out = tmp_path / "results"
    argv = [
        "--data-dir",
        str(fashion_dir),
        "--out",
        str(out),
        "--train-rows",
        "200",
        "--test-rows",
        "100",
        "--teacher-epochs",
        "1",
        "--epochs",
        "1",
        "--members",
        "2",
        "--temperatures",
        "2",
        "8",
        "--device",
        "cpu",
        "--tag",
        "smoke",
    ]
    assert _load("examples/fashion_mnist_distill.py").main(argv) == 0
    json_path, png_path = (
        out / "fashion_mnist_distill_smoke.json",
        out / "fashion_mnist_distill_smoke.png",
    )
    assert sorted(out.iterdir()) == sorted([json_path, png_path])
    assert _wrote(capsys.readouterr().out) == [json_path.resolve(), png_path.resolve()]
    results = json.loads(json_path.read_text())
    assert (results["settings"]["train_rows"], results["settings"]["test_rows"]) == (200, 100)
    assert len(results["teacher_members"]) == 2
    assert set(results["students"]) == {"2x800", "2x30"}
    for entry in results["students"].values():
        assert set(entry["distilled"]) == {"2.0", "8.0"}
        assert all(0.0 <= a <= 1.0 for a in [entry["hard_labels"], *entry["distilled"].values()])
    assert all(0.0 <= a <= 1.0 for a in [results["ensemble"], *results["teacher_members"]])
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE


def test_fashion_views_example_writes_where_asked(
    tmp_path, fashion_dir, capsys, tracked_tree_unchanged
):
    pytest.importorskip("matplotlib")
    out = tmp_path / "results"
    argv = [
        "--data-dir",
        str(fashion_dir),
        "--out",
        str(out),
        "--train-rows",
        "100",
        "--validation-rows",
        "40",
        "--test-rows",
        "60",
        "--teacher-epochs",
        "1",
        "--epochs",
        "1",
        "--seeds",
        "2",
        "--views",
        "1",
        "2",
        "--quiet",
    ]
    assert _load("examples/fashion_mnist_views.py").main(argv) == 0
    json_path, png_path = out / "fashion_mnist_views.json", out / "fashion_mnist_views.png"
    assert sorted(out.iterdir()) == sorted([json_path, png_path])
    assert _wrote(capsys.readouterr().out) == [
        json_path.resolve(),
        png_path.resolve(),
    ]  # --quiet: only these
    results = json.loads(json_path.read_text())
    s = results["settings"]
    assert (s["train_rows"], s["validation_rows"], s["test_rows"]) == (100, 40, 60)
    assert set(results["students"]) == {"MLP 2x800", "ConvNet 8-16, hidden 32"}
    teacher = results["teacher"]["test"]
    for entry in results["students"].values():
        hard = entry["hard_labels"]
        assert len(hard["test"]) == 2 and hard["mean"] == pytest.approx(np.mean(hard["test"]))
        assert set(entry["distilled"]) == {"1", "2"}
        for runs in entry["distilled"].values():
            assert len(runs["test"]) == len(runs["validation"]) == 2
            assert all(0.0 <= a <= 1.0 for a in [*runs["test"], *runs["validation"]])
            expected = (np.mean(runs["test"]) - hard["mean"]) / (teacher - hard["mean"])
            assert runs["gap_closed"] == pytest.approx(expected)
            low, high = runs["gap_closed_95"]
            assert (
                low <= high or np.isnan([low, high]).all()
            )  # nan: no resample of tiny data had a gap
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE


def _quick_benchmark(script: str, out: Path) -> None:
    """``python benchmarks/SCRIPT --quick --out OUT`` from ``out``, as a user runs it; it must succeed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=out,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def test_mlp_teachers_example_is_the_same_in_two_processes_and_in_one(
    tmp_path, capsys, fashion_dir, tracked_tree_unchanged
):
    recipes = ["2x800, no regularization", "2x1200, dropout 0.2, shifts and flips"]
    common = ["--data-dir", str(fashion_dir), "--validation-rows", "40", "--epochs", "2"]
    common += ["--recipes", *recipes]
    script = _load("examples/fashion_mnist_mlp_teachers.py")
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    assert script.main([*common, "--out", str(one), "--quiet"]) == 0
    assert torch.get_num_threads() == threads  # its one thread per net is given back
    json_path, png_path = one / "mlp_teachers.json", one / "mlp_teachers.png"
    assert sorted(one.iterdir()) == sorted([json_path, png_path])
    assert _wrote(capsys.readouterr().out) == [json_path.resolve(), png_path.resolve()]
    results = json.loads(json_path.read_text())
    s = results["settings"]
    assert (s["train_rows"], s["validation_rows"], s["epochs"]) == (200, 40, 2)
    assert list(results["recipes"]) == recipes and results["reference"] == recipes[0]
    flips = results["recipes"][recipes[1]]
    assert flips["augment"] == {
        "kind": "compose",
        "steps": [{"kind": "shift", "pixels": 2, "p": 0.5}, {"kind": "hflip", "p": 0.5}],
    }
    for r in results["recipes"].values():
        acc = r["validation_accuracy"]
        assert len(acc) == len(r["training_loss"]) == 2 and all(0.0 <= a <= 1.0 for a in acc)
        assert (r["best"], r["last"]) == (max(acc), acc[-1])
        assert acc[r["best_epoch"] - 1] == r["best"]
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE

    two = tmp_path / "two"  # as a user runs it: spawned workers, one recipe each
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script.__file__), *common, "--out", str(two), "--jobs", "2"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("epoch 2/2, training loss") == 2  # progress, a line per epoch
    again = json.loads((two / "mlp_teachers.json").read_text())
    other = tmp_path / "other-seed"  # the control: another seed trains other nets
    assert script.main([*common, "--out", str(other), "--quiet", "--seed", "1"]) == 0
    control = json.loads((other / "mlp_teachers.json").read_text())
    for name in recipes:  # the same views, order and initialization in either process
        loss = results["recipes"][name]["training_loss"]
        assert again["recipes"][name]["training_loss"] == loss
        assert control["recipes"][name]["training_loss"] != loss


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--validation-rows", "0"], "--validation-rows must be at least 1, got 0"),
        (["--train-rows", "-50"], "--train-rows must be at least 1, got -50"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--train-rows", "100000"], "--train-rows 100000: the data has 200 training rows"),
        (["--validation-rows", "500"], "(--validation-rows): n_val=500 leaves no training rows"),
        (["--data-dir", "/nonexistent-kdpipe-folder"], "/nonexistent-kdpipe-folder"),
        (["--recipes", "2x1200, dropout 0.2", "2x1200, dropout 0.2"], "names a recipe twice"),
    ],
)
def test_mlp_teachers_example_refuses_bad_flags_in_one_line(
    tmp_path, capsys, fashion_dir, flags, message
):
    script = _load("examples/fashion_mnist_mlp_teachers.py")
    argv = ["--data-dir", str(fashion_dir), "--validation-rows", "40", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as stop:
        script.main([*argv, *flags])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # trains a teacher and builds views caches (~17 s); CI runs it (.ci/run: pytest -m slow)
def test_views_benchmark_quick_run_writes_its_results(tmp_path):
    _quick_benchmark("bench_views.py", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["views_quick.json", "views_quick.md"]
    result = json.loads((tmp_path / "views_quick.json").read_text())
    epochs = result["epochs"]
    assert epochs["cost"]["mac_ratio"] >= 10
    assert set(epochs["ratio_vs_online"]) == {
        k for k in epochs["median_epoch_seconds"] if "online" in k or "views" in k
    }
    dense = result["bytes"]["formats"]["dense float16"]
    # a dense float16 view of 1,000 classes: 2 bytes a logit plus the view's 8-byte digest, uncompressed or less
    assert 0 < dense["bytes_per_view"] <= 2 * 1000 + 8
    assert (
        result["bytes"]["formats"]["top-10 float16 (TopK(10))"]["bytes_per_view"]
        < dense["bytes_per_view"] / 10
    )


def test_every_install_command_in_the_readme_pins_torch_first():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "pip install" in line]
    assert len(commands) >= 3
    for line in commands:
        after = line.split("pip install", 1)[1].split()
        assert after[0] == "torch==2.13.0", line


def test_cluster_sweep_example_reads_and_writes_only_the_bucket(
    tmp_path, monkeypatch, capsys, s3_bucket, s3_cluster, tracked_tree_unchanged
):
    """On a running cluster (worker processes); X, the cache and every read go through the bucket."""
    import s3fs

    url, options = s3_bucket
    monkeypatch.chdir(tmp_path)
    argv = [
        "--url",
        f"{url}/demo",
        "--storage-option",
        f"endpoint_url={options['endpoint_url']}",
        "--scheduler",
        s3_cluster.scheduler.address,
        "--members",
        "2",
        "--teacher-epochs",
        "1",
        "--epochs",
        "1",
        "--temperatures",
        "1",
        "4",
        "--alphas",
        "0.5",
        "--cv",
        "2",
    ]
    assert _load("examples/cluster_sweep.py").main(argv) == 0
    written = tmp_path / "kdpipe-results" / "cluster_sweep" / "cluster_sweep.json"
    assert _wrote(capsys.readouterr().out) == [written.resolve()]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "kdpipe-results"
    ]  # no local X, no local cache
    results = json.loads(written.read_text())
    assert set(results["cv_accuracy"]) == {"T=1, alpha=0.5", "T=4, alpha=0.5"}
    assert results["best_params"]["temperature"] in (1.0, 4.0)
    assert all(
        0.0 <= v <= 1.0 for v in [*results["cv_accuracy"].values(), results["test_accuracy"]]
    )
    cache = LogitCache.open(f"{url}/demo/logits.zarr", storage_options=options)
    assert (cache.n_members, cache.n_classes) == (2, 10) and cache.verify().ok
    assert s3fs.S3FileSystem(**options).exists(f"{url}/demo/X.zarr/zarr.json")


@pytest.mark.slow  # trains a small teacher and a few students (~10 s); CI runs it (.ci/run: pytest -m slow)
def test_low_rank_benchmark_quick_run_writes_its_results(tmp_path):
    _quick_benchmark("bench_sparse_lowrank.py", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sparse_lowrank_quick.json",
        "sparse_lowrank_quick.md",
    ]
    result = json.loads((tmp_path / "sparse_lowrank_quick.json").read_text())
    formats = [(r["temperature"], r["epochs"], r["format"]) for r in result["rows"]]
    assert formats == [
        (8.0, 2, "dense, other seeds"),
        (8.0, 2, "dense"),
        (8.0, 2, "LowRank(16), basis from 400 rows"),
        (8.0, 2, "LowRank(16), basis from 100 rows"),
        (8.0, 2, "TopK(8) bucket"),
        (8.0, 2, "TopKSampledTail(4, 4, 8)"),
        (8.0, 3, "dense, other seeds"),
        (8.0, 3, "dense"),
        (8.0, 3, "LowRank(16), basis from 400 rows"),
    ]
    by_name = {(r["epochs"], r["format"]): r for r in result["rows"]}
    low = by_name[(2, "LowRank(16), basis from 400 rows")]
    # 16 float16 coefficients and a float32 error a row; the basis: 300 x 17 float32 and a header
    assert low["bytes_per_row"] == 36 and 300 * 17 * 4 < low["basis_bytes"] < 300 * 17 * 4 + 200
    # a basis from fewer rows fits the rest worse; both are lossy (the teacher has rank 65)
    fewer = by_name[(2, "LowRank(16), basis from 100 rows")]
    assert 0 < low["relative_error"] < fewer["relative_error"] < 1
    assert by_name[(2, "dense")]["gap"]["mean_points"] == 0


def test_loss_benchmark_quick_run_writes_its_results(tmp_path):
    _quick_benchmark("bench_losses.py", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["losses_quick.json", "losses_quick.md"]
    result = json.loads((tmp_path / "losses_quick.json").read_text())
    for row in result["rows"]:
        assert {"textbook (floor)", "kdpipe dense"} <= set(row["steps"])
        assert row["steps"]["textbook (floor)"]["ratio"] == 1.0
        assert row["gradient_max_abs_difference"] <= 1e-5 * row["gradient_max_abs"]
