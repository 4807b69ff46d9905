"""Networks of our own, registered with timm so that ``timm.create_model`` (and so
:func:`core.model.build_network`, training and loading) knows them by name.

``small_cnn``: the plain convolutional network of the study this project began from, a few
convolution - batch norm - ReLU - max-pool blocks, a global average pool and a linear
classifier. It has no ImageNet weights and is trained from scratch (``train.compare``).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

__all__ = ["SmallCNN", "small_cnn"]


def _block(in_channels: int, out_channels: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class SmallCNN(nn.Module):
    """Conv - BN - ReLU - max-pool blocks, then global average pooling and a linear layer.

    The last block has no pooling, so Grad-CAM reads a map of ``image_size / 2**(n-1)`` pixels
    (12 x 12 at 192 px with the default five blocks).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        channels: tuple[int, ...] = (16, 32, 64, 128, 256),
        drop_rate: float = 0.2,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_chans
        for i, width in enumerate(channels):
            layers += _block(previous, width, pool=i < len(channels) - 1)
            previous = width
        self.features = nn.Sequential(*layers)
        self.num_features = previous
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(previous, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(torch.flatten(self.global_pool(x), 1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def small_cnn(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """timm entry point. There are no pretrained weights: ``pretrained=True`` is refused."""
    if pretrained:
        raise ValueError("small_cnn has no pretrained weights; it is trained from scratch.")
    # timm passes its own loading options (pretrained_cfg, cache_dir, ...); keep the model's.
    known = ("num_classes", "in_chans", "channels", "drop_rate")
    return SmallCNN(**{k: v for k, v in kwargs.items() if k in known})
