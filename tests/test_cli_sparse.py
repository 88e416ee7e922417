"""``kdpipe build-cache --sparse``: each format's spelling, and a bad one refused before any work."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kdpipe.cache import LogitCache, LowRank, Sampled, TopK, TopKSampledTail
from kdpipe.cache.sparse import parse_sparse_option
from kdpipe.cli import main

N, D, C = 40, 4, 12


@pytest.fixture
def files(tmp_path):
    X = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    teacher = torch.nn.Linear(D, C).eval()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # torch.jit is deprecated in torch >= 2.10
        torch.jit.script(teacher).save(str(tmp_path / "t.pt"))
    return tmp_path


@pytest.mark.parametrize(
    "text, spec",
    [
        ("topk:8", TopK(8, tail="bucket")),
        ("topk:8:uniform", TopK(8, tail="uniform")),
        ("topk:8:uint8:uniform", TopK(8, tail="uniform", values="uint8")),
        ("topk:8+16@4", TopKSampledTail(8, 16, 4.0)),
        ("topk:8+16@2.5:uint8", TopKSampledTail(8, 16, 2.5, values="uint8")),
        ("sampled:32@4", Sampled(32, 4.0)),
        ("lowrank:248", LowRank(248)),
        ("lowrank:64@1000", LowRank(64, 1000)),
    ],
)
def test_every_sparse_format_has_a_command_line_spelling(text, spec):
    assert parse_sparse_option(text) == spec


@pytest.mark.parametrize(
    "text, needle",
    [
        ("topk:0", "k must be a positive integer"),
        ("topk:x", "K must be an integer, got 'x'"),
        ("topk:8:fp8", "unknown or repeated options"),
        ("topk:8:uint8:uint8", "unknown or repeated options"),
        ("topk:8+16", "topk:K+DRAWS@T"),
        ("topk:8+16@4:uniform", "topk:K+DRAWS@T"),
        ("sampled:32", "is not a sparse format"),
        ("sampled:32@0", "temperature must be a finite number > 0"),
        ("sampled:70000@4", "draws must be at most 65535"),
        ("dense", "is not a sparse format"),
        ("lowrank:", "is not a sparse format"),
        ("lowrank:x", "R must be an integer, got 'x'"),
        ("lowrank:2.5", "R must be an integer, got '2.5'"),
        ("lowrank:8@y", "ROWS must be an integer, got 'y'"),
        ("lowrank:8@8", "fit_rows (8) must be more than rank (8)"),
    ],
)
def test_a_bad_sparse_format_is_one_line_and_status_2_before_any_work(files, capsys, text, needle):
    out = files / "cache"
    assert (
        main(
            [
                "build-cache",
                str(files / "t.pt"),
                "--data",
                str(files / "missing.npy"),
                "-o",
                str(out),
                "--sparse",
                text,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        len(err.splitlines()) == 1
        and err.startswith(f"kdpipe: error: --sparse {text!r}")
        and needle in err
    ), err
    assert not out.exists()  # checked before the data (which does not exist) was even looked at


@pytest.mark.parametrize(
    "text, needle",
    [
        (f"topk:{C}", f"TopK(k={C}) keeps every one of the {C} classes"),
        (f"topk:{C + 4}+2@4", f"TopKSampledTail(k={C + 4}) keeps every one of the {C} classes"),
        (f"lowrank:{C}", f"LowRank(rank={C}) keeps as many values as the {C} classes"),
    ],
)
def test_a_sparse_format_as_large_as_the_teacher_is_one_line_and_status_2(
    files, capsys, text, needle
):
    out = files / "cache"
    args = ["build-cache", str(files / "t.pt"), "--data", str(files / "x.npy"), "-o", str(out)]
    assert main([*args, "--sparse", text]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"kdpipe: error: --sparse {text!r}: ")
    assert needle in err and "or a dense cache (no --sparse)" in err, err
    assert not out.exists()


def test_build_cache_writes_the_sparse_format_it_was_given(files):
    out = files / "cache"
    assert (
        main(
            [
                "build-cache",
                str(files / "t.pt"),
                "--data",
                str(files / "x.npy"),
                "-o",
                str(out),
                "--quiet",
                "--sparse",
                "topk:4+6@2",
            ]
        )
        == 0
    )
    cache = LogitCache.open(out)
    assert cache.sparse == TopKSampledTail(4, 6, 2.0) and cache.verify().ok
    assert cache.read_rows(np.arange(N)).tail_counts.sum(axis=-1).tolist() == [[6.0]] * N


def test_build_cache_writes_a_low_rank_cache_that_decodes_to_the_teachers_logits(files):
    out = files / "cache"
    args = ["build-cache", str(files / "t.pt"), "--data", str(files / "x.npy"), "-o", str(out)]
    assert main([*args, "--quiet", "--sparse", "lowrank:5@30"]) == 0
    cache = LogitCache.open(out)
    assert cache.manifest.sparse["rank"] == 5 and cache.verify().ok
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit, as in the fixture
        teacher = torch.jit.load(str(files / "t.pt"))
    with torch.no_grad():
        expected = teacher(torch.from_numpy(np.load(files / "x.npy"))).numpy()
    # a linear teacher of 4 inputs: centred logits of rank 4 < 5, so the decode is exact
    np.testing.assert_allclose(np.asarray(cache)[:, 0], expected, atol=1e-4)


def test_verify_of_a_low_rank_cache_without_its_basis_says_missing_in_the_flags_words(
    files, capsys
):
    out = files / "cache"
    args = ["build-cache", str(files / "t.pt"), "--data", str(files / "x.npy"), "-o", str(out)]
    assert main([*args, "--quiet", "--sparse", "lowrank:5@30"]) == 0
    (out / "lowrank_basis.npy").unlink()
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out
    head = printed.splitlines()[0]
    assert "FAILED" in head and "1 failed (missing)" in head, head
    assert "--overwrite" in printed and "overwrite=True" not in printed
