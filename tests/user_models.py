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


# --- the generic tensors family (tests/test_tensors_*.py) -------------------------------------
CLASSES = 10


class TinyClassifier(nn.Module):
    """A few convs and a linear head: class logits."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(16, CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


class TwoHeads(TinyClassifier):
    """Class logits (10 values per item) and a dense map (4 x 16 x 16 = 1024 values per item)."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Conv2d(16, 4, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(images)
        return self.head(features.mean(dim=(2, 3))), self.dense(features)


class ImageAndMask(TinyClassifier):
    """Two inputs: an image and a one-channel mask, concatenated as channels."""

    def __init__(self) -> None:
        super().__init__(in_channels=4)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([image, mask], dim=1))


class BatchCoupled(TinyClassifier):
    """Centres the features on the batch mean: each item's output depends on its batch-mates."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images).mean(dim=(2, 3))
        return self.head(pooled - pooled.mean(dim=0, keepdim=True))


def _classifier(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():  # a realistic spread of logits: the seeded init alone gives ~0.1
        model.head.weight.mul_(8.0)
    return model


def tiny_classifier() -> nn.Module:
    return _classifier(TinyClassifier)


def two_heads() -> nn.Module:
    return _classifier(TwoHeads)


def image_and_mask() -> nn.Module:
    return _classifier(ImageAndMask)


def batch_coupled() -> nn.Module:
    return _classifier(BatchCoupled)


def tensors_spec(name: str, outputs: tuple[str, ...] = ("logits",), *, mask: bool = False,
                 postprocess: dict | None = None) -> dict:
    """A tensors-family spec: a 32x32 image (plus a 1x32x32 mask) in, ``outputs`` out."""
    inputs = [{"name": "image", "shape": ["batch", 3, SIZE, SIZE], "dtype": "float32"}]
    if mask:
        inputs.append({"name": "mask", "shape": ["batch", 1, SIZE, SIZE], "dtype": "float32"})
    return {
        "name": name, "family": "tensors", "inputs": inputs, "outputs": list(outputs),
        "profile": {"min": 1, "opt": 4, "max": 8},
        "preprocess": {"height": SIZE, "width": SIZE},
        "postprocess": {"outputs": {"logits": {"kind": "logits"}}, "top_k": 3}
        if postprocess is None else postprocess,
    }


# --- export errors and provenance (tests/export/test_export_errors.py) -------------------------
class DataDependent(TinyEmbedder):
    """A branch on tensor values: torch.export refuses it, the TorchScript trace takes the branch
    it saw (the same one for every non-zero input, so the fallback's ONNX still matches)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images).mean(dim=(2, 3))
        if images.abs().sum() > 0:
            return self.head(pooled)
        return torch.zeros_like(self.head(pooled))


class DataDependentBatchInt(DataDependent):
    """Also a batch read as a Python int: any batch in PyTorch, but the TorchScript trace records
    ``int(x.shape[0])`` as the number it saw."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images).mean(dim=(2, 3))
        if images.abs().sum() > 0:
            return self.head(pooled.reshape(int(images.shape[0]), -1))
        return torch.zeros_like(self.head(pooled))


def data_dependent() -> nn.Module:
    return _seeded(DataDependent)


def data_dependent_batch_int() -> nn.Module:
    return _seeded(DataDependentBatchInt)


def self_loading_embedder() -> nn.Module:
    """A factory that loads its own (here: made-up "trained") weights, as a user's factory does."""
    model = TinyEmbedder()
    generator = torch.Generator().manual_seed(7)
    trained = {k: torch.randn(v.shape, generator=generator).to(v.dtype) if v.is_floating_point() else v
               for k, v in model.state_dict().items()}
    trained["features.1.running_var"] = trained["features.1.running_var"].abs() + 0.5
    model.load_state_dict(trained)
    return model.eval()


# --- tensors parity: sanity and output kinds (tests/parity/test_parity_sanity.py, *_output_kinds.py) --
class ConstantLogits(TinyClassifier):
    """The same logits for every input: its features are multiplied by zero before the head."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)) * 0.0)


def constant_logits() -> nn.Module:
    return _classifier(ConstantLogits)


MAP_SIZE = 16


class NearEmptyMap(nn.Module):
    """x (B, 1, 16, 16) -> a probability map (B, 1, 16, 16): sigmoid(-25 + 40 * relu(conv(x))), about
    1.4e-11 wherever x <= 0 (a text map on a photograph without text), up to 1 where x is ~1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-25.0 + 40.0 * torch.relu(self.conv(x)))


def near_empty_map() -> nn.Module:
    return NearEmptyMap().eval()


def map_items(count: int = 8):  # -> np.ndarray (numpy imported here: this file imports torch only)
    """(count, 1, 16, 16) float32 inputs of NearEmptyMap: the even items are 0 everywhere (an empty
    map), each odd one has a 3x3 blob of values 0.5..1 at its own place (a small region on)."""
    import numpy as np

    rng = np.random.default_rng(3)
    items = np.zeros((count, 1, MAP_SIZE, MAP_SIZE), np.float32)
    for i in range(1, count, 2):
        y, x = 2 + (3 * i) % 10, 1 + (5 * i) % 11
        items[i, 0, y:y + 3, x:x + 3] = rng.uniform(0.5, 1.0, (3, 3))
    return items


ANCHORS, FEATURES = 12, 6
BACKGROUND_ANCHOR = 7  # its score bias keeps it far under any threshold


class BoxesScores(nn.Module):
    """x (B, 12, 6) -> (B, 12, 5): per anchor a box in pixels (x1, y1, x2, y2: tens to hundreds)
    and an objectness score in (0, 1), one tensor as many detectors' raw heads emit it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.box = nn.Linear(FEATURES, 4)
        self.score = nn.Linear(FEATURES, 1)
        self.anchor_box = nn.Parameter(torch.linspace(20.0, 600.0, ANCHORS)[:, None].repeat(1, 4))
        bias = torch.linspace(-1.5, 2.0, ANCHORS)
        bias[BACKGROUND_ANCHOR] = -12.0
        self.anchor_score = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes = self.anchor_box + 40.0 * self.box(x)
        scores = torch.sigmoid(self.score(x)[..., 0] + self.anchor_score)
        return torch.cat([boxes, scores[..., None]], dim=-1)


def boxes_scores() -> nn.Module:
    return BoxesScores().eval()


class ScaledIdentity(nn.Module):
    """Its input times a learnt 1.0: the output is the preprocessed image itself, so the engine's
    own error is 0 and everything the two sides differ by is the preprocessing floor."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale


def scaled_identity() -> nn.Module:
    return ScaledIdentity().eval()
