"""Factories for the README's "Your own model" walkthrough (run from the repository root with
``PYTHONPATH=examples``, so ``--factory own_model:squeezenet`` imports this file).

- ``squeezenet``: torchvision ``squeezenet1_1`` (weights=None, seeded), a one-input classifier.
- ``masked_classifier``: a small two-input model, an image and a mask, with two outputs (class
  logits and a coarse heatmap).

``python examples/own_model.py SPEC.json IMAGES OUT`` turns a folder of images into items of the
two-input model: each image through the spec's preprocessing plus a mask (a centred disc, 1 inside,
0 outside); OUT ending in ``.npz`` is one file of (N, ...) arrays per input name (``parity --data``,
``calibrate --data``), otherwise a folder of one ``.npz`` per image (``run --input``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn


def squeezenet() -> nn.Module:
    """torchvision squeezenet1_1, untrained (weights=None), seeded so every export is the same."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.squeezenet1_1(weights=None)


class MaskedClassifier(nn.Module):
    """image (B, 3, H, W) and mask (B, 1, H, W) -> logits (B, 10), heatmap (B, 1, H/4, W/4)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(4, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.heat = nn.Conv2d(32, 1, 1)
        self.head = nn.Linear(32, classes)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(torch.cat([image * mask, mask], dim=1))
        weights = nn.functional.avg_pool2d(mask, 4)  # the mask at the features' resolution
        pooled = (features * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1.0)
        return self.head(pooled), self.heat(features)


def masked_classifier() -> nn.Module:
    torch.manual_seed(0)
    return MaskedClassifier()


def centred_disc(height: int, width: int) -> np.ndarray:
    """(1, H, W) float32: 1 inside a centred disc of radius 0.4 x the short side, 0 outside."""
    y, x = np.mgrid[:height, :width]
    inside = (y - (height - 1) / 2) ** 2 + (x - (width - 1) / 2) ** 2 <= (0.4 * min(height, width)) ** 2
    return inside.astype(np.float32)[None]


def write_masked_items(spec_path: str, images: str, out: str) -> int:
    """Images -> items of a (image, mask) model; see the module docstring. Returns the count."""
    from batchforge.runtime.images import list_images, read_image
    from batchforge.runtime.preprocess import preprocess_image
    from batchforge.runtime.spec import ModelSpec

    spec = ModelSpec.from_dict(json.loads(Path(spec_path).read_text()))
    image_name, mask_name = spec.input_names
    paths = list_images(images)
    mask = centred_disc(spec.preprocess.height, spec.preprocess.width)
    items = {p.stem: {image_name: preprocess_image(read_image(p), spec.preprocess)[0], mask_name: mask}
             for p in paths}
    target = Path(out)
    if target.suffix == ".npz":
        np.savez(target, **{name: np.stack([item[name] for item in items.values()]) for name in spec.input_names})
    else:
        target.mkdir(parents=True, exist_ok=True)
        for stem, item in items.items():
            np.savez(target / f"{stem}.npz", **item)
    return len(items)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python examples/own_model.py SPEC.json IMAGES OUT(.npz | folder)")
    count = write_masked_items(*sys.argv[1:])
    print(f"wrote {count} items to {sys.argv[3]}")
