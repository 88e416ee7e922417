"""Row digests stored in the cache, and check_alignment: misaligned rows or labels are named."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import kdpipe
from kdpipe.cache import LogitCache, build_cache
from kdpipe.cache.alignment import check_alignment
from kdpipe.cache.fingerprint import row_digests
from kdpipe.errors import CacheCorruptError, CacheMismatchError, RowMismatchError

N, D, C, ROWS = 300, 6, 4, 64
M64 = (1 << 64) - 1


def reference_digest(row_bytes: bytes) -> int:
    """The documented digest in plain Python integers: odd-keyed sum of LE words, splitmix64."""

    def mix(z: int) -> int:
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & M64
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    width = len(row_bytes)
    padded = row_bytes + b"\0" * (-width % 8)
    total = 0
    for i in range(len(padded) // 8):
        word = int.from_bytes(padded[8 * i : 8 * i + 8], "little")
        key = mix(((i + 1) * 0x9E3779B97F4A7C15) & M64) | 1
        total = (total + key * word) & M64
    return mix(total ^ ((width * 0x94D049BB133111EB) & M64))


@pytest.mark.parametrize(
    "dtype, shape", [("<f4", (5, 6)), ("<f8", (4, 3)), ("<i2", (3, 5)), ("|u1", (4, 2, 3))]
)
def test_row_digests_match_the_documented_hash(dtype, shape):
    block = np.random.default_rng(0).normal(size=shape).__mul__(50).astype(dtype)
    got = row_digests(block)
    assert got.dtype == np.uint64 and got.shape == (shape[0],)
    expected = [
        reference_digest(
            np.ascontiguousarray(row).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        )
        for row in block
    ]
    assert got.tolist() == expected


def test_row_digests_depend_on_bytes_only_and_tell_rows_apart():
    X = np.random.default_rng(1).normal(size=(2000, 7)).astype(np.float32)
    d = row_digests(X)
    assert len(np.unique(d)) == len(X)
    np.testing.assert_array_equal(
        row_digests(X.astype(">f4")), d
    )  # byte order of the platform does not matter
    np.testing.assert_array_equal(
        row_digests(np.asfortranarray(X)), d
    )  # memory layout does not either
    np.testing.assert_array_equal(
        row_digests(X.reshape(2000, 7, 1)), d
    )  # a row is its bytes, whatever its shape
    flipped = X.copy()
    flipped.view(np.uint32)[:, 3] ^= 1  # one bit of one value of every row
    assert (row_digests(flipped) != d).all()
    assert not np.array_equal(row_digests(X.astype(np.float64)), d)  # computed in the dtype given


def test_row_digests_agree_across_processes():
    X = np.arange(60, dtype=np.float32).reshape(10, 6) / 7
    code = (
        "import numpy as np; from kdpipe.cache.fingerprint import row_digests; "
        "print(row_digests(np.arange(60, dtype=np.float32).reshape(10, 6) / 7).tolist())"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.path.dirname(os.path.dirname(kdpipe.__file__)),
    }  # this checkout's kdpipe
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert json.loads(out) == row_digests(X).tolist()


@pytest.fixture(scope="module", params=["zarr", "hdf5"])
def built(request, tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(-1, C, N)  # some rows unlabeled
    W = rng.normal(size=(D, C)).astype(np.float32)
    path = tmp_path_factory.mktemp("align") / "c"
    cache = build_cache(
        lambda b: b @ W, X, path, y=y, backend=request.param, chunk_rows=ROWS, progress=False
    )
    return cache, X, y


def read_from(X):
    return lambda positions: X[positions]


def test_cache_stores_digests_of_the_rows_it_was_built_from(built):
    cache, X, _ = built
    assert cache.manifest.data_dtype == X.dtype.str
    np.testing.assert_array_equal(cache.row_digests, row_digests(X))
    idx = np.random.default_rng(3).permutation(N)[:77]
    np.testing.assert_array_equal(cache[idx].row_digests, row_digests(X[idx]))
    np.testing.assert_array_equal(cache[idx][10:20].row_digests, row_digests(X[idx][10:20]))


@pytest.mark.parametrize("sample", [1024, 50])  # every row; a random sample
def test_aligned_rows_and_labels_pass(built, sample):
    cache, X, y = built
    check_alignment(cache, read_from(X), y, sample=sample, rng=0)
    idx = np.random.default_rng(4).permutation(N)[:120]  # a CV fold: a subset in any order
    check_alignment(cache[idx], read_from(X[idx]), y[idx], sample=sample, rng=1)
    check_alignment(
        cache, read_from(X.astype(np.float64)), sample=sample
    )  # cast back to the cache's dtype


def misalignments():
    rng = np.random.default_rng(5)
    perm = rng.permutation(N)
    other = rng.permutation(N)
    return {
        # name: (view rows, rows of X given)
        "permuted": (np.arange(N), perm),
        "shifted by one": (np.arange(N - 1), np.arange(1, N)),
        "another fold": (other[:100], other[100:200]),
        "two rows swapped": (np.arange(N), np.r_[0:10, 11, 10, 12:N]),
    }


@pytest.mark.parametrize("kind", list(misalignments()))
@pytest.mark.parametrize("sample", [1024, 40])
def test_misaligned_rows_are_named(built, kind, sample):
    cache, X, _ = built
    view_rows, x_rows = misalignments()[kind]
    with pytest.raises(RowMismatchError) as info:
        check_alignment(cache[view_rows], read_from(X[x_rows]), sample=sample, rng=2)
    message = str(info.value)
    named = [
        tuple(map(int, m))
        for m in re.findall(
            r"row (\d+) of X is row (\d+) of the cache \(expected row (\d+)\)", message
        )
    ]
    assert named, message
    for (
        position,
        found,
        expected,
    ) in named:  # each named row is what the message says, by construction
        assert found == x_rows[position] and expected == view_rows[position] and found != expected
    if sample >= len(view_rows) and kind == "two rows swapped":
        assert {p for p, _, _ in named} == {10, 11}


def test_transformed_X_is_refused_unless_declared_then_only_labels_are_checked(built):
    cache, X, y = built
    for transformed in (X * 2.0 + 1.0, X[::-1] * 3.0):  # scaled, and scaled and permuted
        with pytest.raises(RowMismatchError, match="none of the .* checked rows of X"):
            check_alignment(cache, read_from(transformed))
        check_alignment(cache, read_from(transformed), transformed=True)  # rows unrecognizable
    with pytest.raises(RowMismatchError, match="disagree"):
        check_alignment(cache, read_from(X * 2.0), y[::-1], transformed=True)  # labels are checked
    with pytest.raises(RowMismatchError, match=r"row \d+ of X is row \d+ of the cache"):
        check_alignment(cache, read_from(X[::-1]), transformed=True)  # rows that match still are


def test_some_rows_found_and_others_unknown_is_an_error(built):
    cache, X, _ = built
    damaged = X.copy()
    damaged[[7, 100]] = np.random.default_rng(6).normal(size=(2, D))
    with pytest.raises(
        RowMismatchError, match=r"2 rows match no row of the cache: rows 7, 100 of X"
    ):
        check_alignment(cache, read_from(damaged))


def test_labels_that_disagree_are_named(built):
    cache, X, y = built
    wrong = y.copy()
    labeled = np.flatnonzero(y >= 0)
    target = labeled[3]
    wrong[target] = (y[target] + 1) % C
    pattern = (
        rf"1 of the {labeled.size} rows labeled both in y and in the cache disagree: row {target}: "
        rf"y says {(y[target] + 1) % C}, the cache says {y[target]}"
    )
    with pytest.raises(RowMismatchError, match=pattern):
        check_alignment(cache, read_from(X), wrong)
    unlabeled = y.copy()
    unlabeled[labeled[:10]] = -1  # a row unlabeled on either side is not compared
    check_alignment(cache, read_from(X), unlabeled)
    with pytest.raises(RowMismatchError, match="shape"):
        check_alignment(cache, read_from(X), y[:-1])


def test_error_is_a_value_error_of_kdpipe():
    from kdpipe.errors import KdpipeError

    assert issubclass(RowMismatchError, KdpipeError) and issubclass(RowMismatchError, ValueError)


def as_format_1(src, dst):
    """A copy of a cache as kdpipe wrote it before row digests (format 1)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["format_version"] = 1
    for record in manifest["chunks"]:
        del record["digests_crc32c"]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    (dst / "manifest.initial.json").unlink()  # format 1 had no initial copy
    if manifest["backend"] == "zarr":
        shutil.rmtree(dst / "logits.zarr" / "row_digests")
        return
    import h5py

    for chunk in (dst / "hdf5").glob("*.h5"):
        with h5py.File(chunk, "r+") as f:
            del f["row_digests"]


def test_cache_without_digests_opens_reads_and_checks_labels_only(built, tmp_path):
    cache, X, y = built
    old_path = tmp_path / "old"
    as_format_1(cache.path, old_path)
    old = LogitCache.open(old_path)
    assert old.row_digests is None and old.manifest.format_version == 1
    np.testing.assert_array_equal(np.asarray(old), np.asarray(cache))
    assert old.verify().ok
    check_alignment(old, read_from(X[::-1]))  # rows cannot be checked
    with pytest.raises(RowMismatchError, match="disagree"):
        check_alignment(old, read_from(X), y[::-1])
    with pytest.raises(
        CacheMismatchError, match="format version 1"
    ):  # never extended with format-2 chunks
        build_cache(
            lambda b: b,
            X,
            old_path,
            backend=cache.manifest.backend,
            chunk_rows=ROWS,
            progress=False,
        )


def test_damaged_digests_are_caught(built, tmp_path):
    cache, _, _ = built
    path = tmp_path / "c"
    shutil.copytree(cache.path, path)
    if cache.manifest.backend == "zarr":
        target = path / "logits.zarr" / "row_digests" / "c" / "1"
        raw = bytearray(target.read_bytes())
        raw[5] ^= 0x10
        target.write_bytes(bytes(raw))
    else:
        import h5py

        with h5py.File(path / "hdf5" / "000001.h5", "r+") as f:
            del f["row_digests"]
            f.create_dataset(
                "row_digests", data=np.zeros(ROWS, np.uint64)
            )  # rewritten: checksum differs
    damaged = LogitCache.open(path)
    report = damaged.verify()
    assert report.status == "FAILED" and report.corrupt == (1,)
    with pytest.raises(CacheCorruptError, match="chunk 1"):
        _ = damaged.row_digests
