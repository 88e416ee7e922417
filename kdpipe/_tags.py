"""Old import path of :func:`kdpipe._estimator.torch_classifier_tags`, kept for
``kdpipe.specialists`` until its imports move. Nothing else imports this module."""

from __future__ import annotations

from kdpipe._estimator import torch_classifier_tags

__all__ = ["torch_classifier_tags"]
