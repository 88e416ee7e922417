"""Student networks: the default MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "logistic": nn.Sigmoid}


class MLP(nn.Module):
    """A fully connected net: ``Linear -> activation -> dropout`` per hidden layer.

    Parameters
    ----------
    n_features : int
        Input width (inputs are flattened).
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, features) -> (batch, classes)
        return self.net(x)
