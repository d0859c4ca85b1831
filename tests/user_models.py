"""Tiny torch models for fast export/parity tests, entered the way users enter theirs:
``module:factory`` plus a spec file."""

from __future__ import annotations

import torch
from torch import nn

SIZE = 32


class TinyEmbedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(16, 12)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


class BatchBaked(TinyEmbedder):
    """Bakes the trace batch into a Reshape: the lint must name it."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).reshape(2, 16, -1).mean(dim=2))


class ViewBaked(TinyEmbedder):
    """``x.view(2, -1)``: the batch written as a number (issue: the user must be told which node)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images).mean(dim=(2, 3))
        return self.head(pooled.view(2, -1)[:, :16])


class ViewShapeDerived(TinyEmbedder):
    """The same view written with the batch taken from the shape: exports cleanly."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images).mean(dim=(2, 3))
        return self.head(pooled.view(images.shape[0], -1))


class TwoGroups(TinyEmbedder):
    """A model constant that equals the trace batch (2 channel groups, like swin_t's 2 windows):
    ``[2, -1]`` reshapes the channel-major features, which holds at every batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.group_scale = nn.Parameter(torch.tensor([[1.5], [0.5]]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images).mean(dim=(2, 3))  # (batch, 16)
        groups = pooled.transpose(0, 1).reshape(2, -1) * self.group_scale  # (2, 8 * batch)
        return self.head(groups.reshape(16, -1).transpose(0, 1))


def _seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def view_baked() -> nn.Module:
    return _seeded(ViewBaked)


def view_shape_derived() -> nn.Module:
    return _seeded(ViewShapeDerived)


def two_groups() -> nn.Module:
    return _seeded(TwoGroups)


def tiny_embedder() -> nn.Module:
    torch.manual_seed(0)
    model = TinyEmbedder().eval()
    with torch.no_grad():
        model.features[1].running_var.fill_(0.5)
        model.features[1].running_mean.fill_(0.1)
    return model


def batch_baked() -> nn.Module:
    torch.manual_seed(0)
    return BatchBaked().eval()


def spec_dict(name: str = "user_tiny") -> dict:
    return {
        "name": name, "family": "reid",
        "inputs": [{"name": "images", "shape": ["batch", 3, SIZE, SIZE], "dtype": "float32"}],
        "outputs": ["embedding"],
        "profile": {"min": 1, "opt": 4, "max": 8},
        "preprocess": {"height": SIZE, "width": SIZE},
        "postprocess": {"top_k": 3},
    }
