"""The ``Examples`` sections of the main public names run as doctests.

``kdpipe.distilled``, ``kdpipe.specialists.estimator`` and ``kdpipe.cache.sparse`` run
theirs in their own test modules; this one covers the rest of the public path.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "kdpipe.cache.build",  # build_cache
    "kdpipe.cache.reader",  # LogitCache
    "kdpipe.cache.lowrank",  # LowRank, fit_basis
    "kdpipe.cache.lowrank_reader",  # LowRankLogitCache.reconstruction_errors
    "kdpipe.losses",  # soft_targets, distillation_loss, hard_label_loss, logit_matching_loss
    "kdpipe.rows",  # LazyRows
    "kdpipe.students",  # MLP
    "kdpipe.datasets",  # make_confusable_classification
    "kdpipe.reproduce.stats",  # share_interval, unresolved, difference_interval
]


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_of_the_module_pass(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no doctested example"
    assert result.failed == 0
