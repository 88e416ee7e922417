"""Student networks: the default :class:`MLP`, and :class:`ConvNet` for images.

A student is built as ``module(n_features=..., n_classes=..., **module_params)`` by the
estimators, plus ``sample_shape=`` (the shape of one row of ``X``, e.g. ``(1, 28, 28)``)
when its constructor takes it, and receives float32 batches ``(b, *sample_shape)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "ConvNet"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "logistic": nn.Sigmoid}


class MLP(nn.Module):
    """A fully connected net: ``Linear -> activation -> dropout`` per hidden layer.

    Parameters
    ----------
    n_features : int
        Input width: rows of any shape are flattened first, so images
        ``(b, *sample_shape)`` take ``n_features = prod(sample_shape)``.
    n_classes : int
        Output width: one logit per class.
    hidden_layer_sizes : sequence of int, default=(100,)
        Units of each hidden layer; empty means a linear model.
    activation : {"relu", "tanh", "gelu", "logistic"}, default="relu"
    dropout : float in [0, 1), default=0.0
        Dropout after each hidden activation.

    Examples
    --------
    >>> import torch
    >>> from kdpipe.students import MLP
    >>> net = MLP(n_features=64, n_classes=10, hidden_layer_sizes=(32, 16))
    >>> net(torch.zeros(5, 64)).shape
    torch.Size([5, 10])
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden_layer_sizes: Sequence[int] = (100,),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        layers: list[nn.Module] = [nn.Flatten()]
        width = n_features
        for units in hidden_layer_sizes:
            layers += [nn.Linear(width, int(units)), _ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(units)
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor:  # (batch, *sample_shape) -> (batch, classes)
        return self.net(x)


class ConvNet(nn.Module):
    """A small convolutional net for images: conv blocks, then a dense hidden layer.

    Each block is ``Conv2d(kernel_size, padding="same") -> activation -> MaxPool2d(2)``
    (the pooling only while both spatial sides are at least 2); the last feature map is
    flattened into ``Linear(hidden) -> activation -> dropout -> Linear(n_classes)``.
    Input channels and the spatial size come from ``sample_shape`` at fit.

    Parameters
    ----------
    n_features : int
        Width of a flattened row, ``prod(sample_shape)`` (checked against it).
    n_classes : int
        Output width: one logit per class.
    sample_shape : tuple of int
        Shape of one row: ``(channels, height, width)``, or ``(height, width)`` for
        one channel. The estimators pass it from ``X``.
    channels : sequence of int, default=(32, 64)
        Output channels of each conv block; its length is the number of blocks.
    kernel_size : int, default=3
        Odd side of the square kernels.
    hidden : int, default=128
        Units of the dense layer after the conv blocks; 0 goes straight to the output.
    activation : {"relu", "tanh", "gelu", "logistic"}, default="relu"
    dropout : float in [0, 1), default=0.0
        Dropout before the output layer.

    Examples
    --------
    >>> import torch
    >>> from kdpipe.students import ConvNet
    >>> net = ConvNet(
    ...     n_features=64, n_classes=10, sample_shape=(1, 8, 8), channels=(4, 8), hidden=16
    ... )
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])

    In an estimator, its sizes are ``module__*`` parameters (``GridSearchCV`` tunes them):

    >>> from kdpipe import DistilledClassifier
    >>> clf = DistilledClassifier(module=ConvNet, module_params={"channels": (8, 16)})
    >>> clf.set_params(module__hidden=32).get_params()["module__hidden"]
    32
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        sample_shape: Sequence[int],
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        hidden: int = 128,
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        shape = tuple(int(s) for s in sample_shape)
        if len(shape) not in (2, 3):
            raise ValueError(
                "ConvNet takes images: X of shape (n, channels, height, width) or (n, height, "
                f"width), got samples of shape {shape}"
            )
        if n_features != math.prod(shape):
            raise ValueError(f"n_features={n_features} is not the size of samples of shape {shape}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size!r}")
        widths = [int(c) for c in channels]
        if not widths or min(widths) < 1:
            raise ValueError(f"channels must be one or more positive numbers, got {channels!r}")
        if int(hidden) < 0:
            raise ValueError(f"hidden must be >= 0, got {hidden!r}")
        self.sample_shape = shape
        depth, height, width = shape if len(shape) == 3 else (1, *shape)
        blocks: list[nn.Module] = []
        for out in widths:
            blocks += [
                nn.Conv2d(depth, out, int(kernel_size), padding="same"),
                _ACTIVATIONS[activation](),
            ]
            if height >= 2 and width >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            depth = out
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten()]
        flat = depth * height * width
        if int(hidden) > 0:
            head += [nn.Linear(flat, int(hidden)), _ACTIVATIONS[activation]()]
            flat = int(hidden)
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(flat, n_classes))
        self.head = nn.Sequential(*head)

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor:  # (batch, *sample_shape) -> (batch, classes)
        if len(self.sample_shape) == 2:
            x = x.unsqueeze(1)  # (batch, 1, height, width)
        return self.head(self.features(x))
