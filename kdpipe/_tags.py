"""The scikit-learn tags shared by kdpipe's classifiers."""

from __future__ import annotations

from sklearn.utils import Tags

__all__ = ["torch_classifier_tags"]


def torch_classifier_tags(tags: Tags) -> Tags:
    """Declare what a kdpipe classifier (a torch student on dense float32 rows) accepts.

    Dense inputs only, no NaN, labels required, multiclass but not multilabel;
    deterministic on CPU for a fixed ``random_state`` (CUDA kernels may differ run to run).
    """
    tags.input_tags.allow_nan = False
    tags.input_tags.sparse = False
    tags.target_tags.required = True
    tags.classifier_tags.multi_class = True
    tags.classifier_tags.multi_label = False
    tags.non_deterministic = False
    return tags
