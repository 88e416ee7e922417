"""
Soft targets at several temperatures
====================================

:func:`kdpipe.soft_targets` is the paper's equation (1), ``q_i = exp(z_i/T) /
sum_j exp(z_j/T)``, averaged over the members of an ensemble. A higher temperature
``T`` gives a softer distribution over the classes, which carries the teacher's
"dark knowledge": how much more a 3 looks like an 8 than like a 1.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from kdpipe import soft_targets

# logits of one row from an ensemble of two members: (rows, members, classes)
logits = torch.tensor(
    [
        [
            [9.0, 1.0, 0.5, 5.5, 0.0, 1.5, 0.0, 2.0, 6.0, 1.0],
            [8.0, 0.5, 1.0, 6.0, 0.5, 1.0, 0.5, 1.5, 5.0, 1.5],
        ]
    ]
)

fig, ax = plt.subplots(figsize=(6, 3))
width = 0.2
for k, t in enumerate((1.0, 2.0, 4.0, 8.0)):
    q = soft_targets(logits, temperature=t)[0].numpy()  # (classes,)
    ax.bar(np.arange(10) + (k - 1.5) * width, q, width, label=f"T = {t:g}")
ax.set_xticks(range(10))
ax.set_xlabel("class")
ax.set_ylabel("soft target")
ax.legend()
fig.tight_layout()

# %%
# The geometric combination takes the softmax of the members' mean logit instead of
# the mean of their softmaxes.
print(soft_targets(logits, 4.0, "arithmetic")[0, :4])
print(soft_targets(logits, 4.0, "geometric")[0, :4])
