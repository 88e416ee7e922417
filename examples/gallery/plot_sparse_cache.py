"""
A top-k sparse cache
====================

With many classes a dense cache is large. ``build_cache(..., sparse=kdpipe.TopK(k))``
keeps each row's ``k`` largest logits per member and a summary of the rest (the tail),
from which soft targets at any temperature are still computed. This example compares
the bytes per row and the student trained from each cache on digits.
"""

import tempfile

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import kdpipe

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
teacher = LogisticRegression(max_iter=2000).fit(X_train, y_train)

folder = tempfile.TemporaryDirectory()
caches = {
    "dense": kdpipe.build_cache(
        teacher, X_train, f"{folder.name}/dense.zarr", y=y_train, progress=False, device="cpu"
    ),
    "top-3": kdpipe.build_cache(
        teacher,
        X_train,
        f"{folder.name}/top3.zarr",
        y=y_train,
        progress=False,
        device="cpu",
        sparse=kdpipe.TopK(k=3),
    ),
}
accuracy, logit_bytes = {}, {}
for name, cache in caches.items():
    logit_bytes[name] = cache.info()["logit_bytes_per_row"]
    student = kdpipe.DistilledClassifier(
        hidden_layer_sizes=(16,), max_epochs=20, learning_rate=3e-3, random_state=0, device="cpu"
    ).fit(X_train, y_train, teacher_logits=cache)
    accuracy[name] = student.score(X_test, y_test)
print("logit bytes per row:", logit_bytes)
print("student accuracy:", accuracy)

# %%
# With 10 classes the sparse record (values, class indices and the tail summary) is
# larger than the dense row; it pays off at hundreds of classes and more.
fig, axes = plt.subplots(1, 2, figsize=(7, 2.5))
axes[0].bar(list(logit_bytes), list(logit_bytes.values()))
axes[0].set_ylabel("logit bytes per row")
axes[1].bar(list(accuracy), list(accuracy.values()))
axes[1].set_ylim(0.8, 1.0)
axes[1].set_ylabel("student test accuracy")
fig.tight_layout()
folder.cleanup()
