"""Re-identification embedders (torchvision backbones, classifier removed, BNNeck) + ensemble.

Each embedder returns a pooled backbone feature passed through a BatchNorm1d "BNNeck" (the
usual re-ID design). The BNNeck's recalibrated statistics centre the embeddings, so cosine
similarities between different inputs spread around zero instead of crowding near one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from batchforge.export.reference import torch_preprocess
from batchforge.export.registry import register, register_ensemble
from batchforge.export.samples import SEED_INIT, generate
from batchforge.export.zoo.init import (
    damp_residual_branches,
    recalibrate_batchnorm,
    reinit_zero_weights,
    seeded,
)
from batchforge.runtime.spec import (
    EnsembleMember,
    EnsembleSpec,
    ModelSpec,
    Preprocess,
    ProfileRange,
    TensorSpec,
)

PROFILE = ProfileRange(min=1, opt=8, max=32)
INIT_IMAGES = 32


class Embedder(nn.Module):
    """Backbone (pooled features) -> BatchNorm1d neck -> embedding."""

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.BatchNorm1d(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(images))


def _spec(name: str, size: int, description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="reid",
        inputs=(TensorSpec("images", ("batch", 3, size, size)),),
        outputs=("embedding",),
        profile=PROFILE,
        preprocess=Preprocess(height=size, width=size),
        postprocess={"top_k": 5},
        description=description,
    )


def _make(spec: ModelSpec, backbone: Callable[[], tuple[nn.Module, int]], seed: int,
          initialise: bool) -> Embedder:
    def build() -> Embedder:
        net, dim = backbone()
        return Embedder(net, dim)

    model = seeded(build, seed)
    if initialise:
        reinit_zero_weights(model, seed)
        damp_residual_branches(model)
        assert spec.preprocess is not None
        images = [torch_preprocess(img, spec.preprocess)[0]
                  for _, img in generate("reid", INIT_IMAGES, SEED_INIT)]
        batch = torch.stack(images)
        recalibrate_batchnorm(model, [batch[i : i + 8] for i in range(0, len(batch), 8)])
    return model.eval()


def _resnet50() -> tuple[nn.Module, int]:
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()
    return net, 2048


def _efficientnet_b3() -> tuple[nn.Module, int]:
    net = torchvision.models.efficientnet_b3(weights=None)
    net.classifier = nn.Identity()
    return net, 1536


def _vit_b_16() -> tuple[nn.Module, int]:
    net = torchvision.models.vit_b_16(weights=None)
    net.heads = nn.Identity()
    return net, 768


RESNET50 = _spec("reid_resnet50", 224, "ResNet50 embedder (2048-d), 224 px")
EFFICIENTNET_B3 = _spec("reid_efficientnet_b3", 300, "EfficientNet-B3 embedder (1536-d), 300 px")
VIT_B_16 = _spec("reid_vit_b_16", 224, "ViT-B/16 embedder (768-d, class token), 224 px")


@register(RESNET50)
def reid_resnet50(*, initialise: bool = True) -> Embedder:
    return _make(RESNET50, _resnet50, seed=11, initialise=initialise)


@register(EFFICIENTNET_B3)
def reid_efficientnet_b3(*, initialise: bool = True) -> Embedder:
    return _make(EFFICIENTNET_B3, _efficientnet_b3, seed=12, initialise=initialise)


@register(VIT_B_16)
def reid_vit_b_16(*, initialise: bool = True) -> Embedder:
    return _make(VIT_B_16, _vit_b_16, seed=13, initialise=initialise)


register_ensemble(
    EnsembleSpec(
        name="reid_ensemble",
        family="reid",
        members=(
            EnsembleMember("reid_resnet50", 0.4),
            EnsembleMember("reid_efficientnet_b3", 0.3),
            EnsembleMember("reid_vit_b_16", 0.3),
        ),
        postprocess={"top_k": 5},
        description="ResNet50 + EfficientNet-B3 + ViT-B/16, weighted 0.4/0.3/0.3",
    )
)
