"""
Distill an ensemble into a small student
=========================================

The two stages of kdpipe on digits: train a small ensemble of teachers, run it **once**
over the transfer set into a logit cache (:func:`kdpipe.build_cache`), then train a
student from the cached soft targets (:class:`kdpipe.DistilledClassifier`) next to the
same student trained on hard labels only.
"""

# %%
# Data and teachers
# -----------------
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import kdpipe
from kdpipe.teacher_training import train_mlp_ensemble

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)

teachers = train_mlp_ensemble(
    X_train,
    y_train,
    n_classes=10,
    n_members=2,
    hidden_layer_sizes=(128,),
    epochs=8,
    random_state=0,
    device="cpu",
)

# %%
# Stage 1: the teacher pass, stored once
# --------------------------------------
folder = tempfile.TemporaryDirectory()
cache = kdpipe.build_cache(
    teachers, X_train, f"{folder.name}/digits.zarr", y=y_train, progress=False, device="cpu"
)
print(cache)
print(cache.shape, "=", "(rows, members, classes)")

# %%
# Stage 2: students from the cache
# --------------------------------
# ``teacher_logits=None`` trains on the hard labels alone: the baseline of the same size.
scores = {}
for name, logits in (("hard labels", None), ("distilled, T=4", cache)):
    student = kdpipe.DistilledClassifier(
        hidden_layer_sizes=(16,),
        temperature=4.0,
        alpha=0.1,
        max_epochs=30,
        learning_rate=3e-3,
        random_state=0,
        device="cpu",
    )
    student.fit(X_train, y_train, teacher_logits=logits)
    scores[name] = student.score(X_test, y_test)

with torch.no_grad():
    ensemble = np.mean([t(torch.from_numpy(X_test)).softmax(-1).numpy() for t in teachers], axis=0)
scores["teacher ensemble"] = float(np.mean(ensemble.argmax(1) == y_test))
print(scores)

fig, ax = plt.subplots(figsize=(5, 2.5))
ax.barh(list(scores), list(scores.values()))
ax.set_xlim(0.8, 1.0)
ax.set_xlabel("test accuracy (digits)")
fig.tight_layout()
folder.cleanup()
