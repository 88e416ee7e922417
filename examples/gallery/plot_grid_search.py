"""
Sweep the temperature with GridSearchCV
=======================================

The logit cache is a fit parameter that lines up with the rows of ``X``: with
scikit-learn's metadata routing, :class:`~sklearn.model_selection.GridSearchCV` splits
it together with ``X`` and ``y``, so every fold trains from its own rows' cached logits
and the teacher never runs again.
"""

import tempfile

import matplotlib.pyplot as plt
import numpy as np
import sklearn
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from kdpipe import DistilledClassifier, build_cache

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)

# two fitted scikit-learn classifiers as the teacher ensemble (their logits are cached)
teachers = [LogisticRegression(C=c, max_iter=2000).fit(X, y) for c in (0.1, 1.0)]

folder = tempfile.TemporaryDirectory()
cache = build_cache(teachers, X, f"{folder.name}/digits.zarr", y=y, progress=False, device="cpu")

# %%
# The search
# ----------
with sklearn.config_context(enable_metadata_routing=True):
    student = DistilledClassifier(
        hidden_layer_sizes=(16,), max_epochs=8, learning_rate=3e-3, random_state=0, device="cpu"
    ).set_fit_request(teacher_logits=True)
    search = GridSearchCV(student, {"temperature": [1.0, 4.0, 16.0]}, cv=3)
    search.fit(X, y, teacher_logits=cache)  # each fold reads only its rows of the cache

print("best:", search.best_params_, round(search.best_score_, 3))

fig, ax = plt.subplots(figsize=(5, 3))
ax.errorbar(
    search.cv_results_["param_temperature"].astype(float),
    search.cv_results_["mean_test_score"],
    yerr=search.cv_results_["std_test_score"],
    marker="o",
)
ax.set_xscale("log", base=2)
ax.set_xlabel("temperature T")
ax.set_ylabel("accuracy (3-fold CV)")
fig.tight_layout()
folder.cleanup()
