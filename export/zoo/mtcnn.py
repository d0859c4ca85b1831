"""``mtcnn``: the three MTCNN face-detection networks (Zhang et al. 2016) with trained weights.

P-Net (fully convolutional: dynamic batch, height and width; it runs over an image pyramid),
R-Net (24x24 crops) and O-Net (48x48 crops, 5 landmarks). The modules are written here; the
weights are the trained ones facenet-pytorch 2.6.0 ships in its wheel (``facenet_pytorch/data``),
read with ``torch.load(weights_only=True)`` by the exporter like any ``--weights`` (their sha256
goes into export.json). The package is located without being imported (its import pulls in
``requests`` and its own detector, which only the parity side uses as the reference).

Every network returns the box offsets, (O-Net) the landmarks as fractions of the crop, and its
face logit: the margin ``face - not face`` of the two-way classifier, whose sigmoid is the
softmax probability the papers use (the runtime takes it in float32). Not the probability itself:
MTCNN ranks overlapping candidates by probabilities near 1 (0.9987 against 0.9984 on an LFW
mosaic), where an FP16 softmax output has a step of 4.9e-4 and made the two tie, so the last NMS
kept the other box (matched IoU 0.957 against facenet-pytorch); the margin keeps FP16's
relative precision (0.3 apart there). The dense layers of R-Net and
O-Net read their input in (width, height, channel) order, the layout the weights were trained
with (they come from the Caffe models of the paper).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from batchforge.errors import UsageError
from batchforge.export.registry import register, register_ensemble
from batchforge.runtime.spec import EnsembleMember, EnsembleSpec, ModelSpec, ProfileRange, TensorSpec

PACKAGE = "facenet-pytorch==2.6.0"
# P-Net sees pyramid levels from 12 px (one 12x12 window) up to the largest level of a
# 2048-pixel image at the default min_face_size 20 (12/20 * 2048 = 1229)
PNET_SIDE = ProfileRange(min=12, opt=240, max=1280)


class PNet(nn.Module):
    """Proposal network: 12x12 windows at stride 2 -> box offsets + face logit map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(images)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), _face_margin(self.conv4_1(x))


def _face_margin(logits: torch.Tensor) -> torch.Tensor:
    """``face - not face`` logit of the classifier (channel 1 minus channel 0)."""
    return logits[:, 1] - logits[:, 0]


def _caffe_flatten(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, W*H*C) in the order the dense weights were trained on."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network: 24x24 crops -> box offsets + face logit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(crops)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_caffe_flatten(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), _face_margin(self.dense5_1(x))


class ONet(nn.Module):
    """Output network: 48x48 crops -> box offsets, 5 landmarks (x1..x5, y1..y5), face logit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(crops)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_caffe_flatten(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), _face_margin(self.dense6_1(x))


def package_weights(name: str) -> Path:
    """The path of ``facenet_pytorch/data/<name>`` (found without importing the package)."""
    found = importlib.util.find_spec("facenet_pytorch")
    roots = list(found.submodule_search_locations or []) if found else []
    path = Path(roots[0]) / "data" / name if roots else None
    if path is None or not path.is_file():
        raise UsageError(f"the MTCNN weights {name} come from {PACKAGE}, which is not installed here",
                         hint=f"run scripts/setup_venv.sh, or `pip install --no-deps {PACKAGE}`")
    return path


def pnet_weights() -> Path:
    return package_weights("pnet.pt")


def rnet_weights() -> Path:
    return package_weights("rnet.pt")


def onet_weights() -> Path:
    return package_weights("onet.pt")


def _crop_spec(name: str, side: int, outputs: tuple[str, ...], what: str) -> ModelSpec:
    return ModelSpec(name=name, family="mtcnn", inputs=(TensorSpec("crops", ("batch", 3, side, side)),),
                     outputs=outputs, profile=ProfileRange(min=1, opt=64, max=256),
                     postprocess={"stage": name.rpartition("_")[2]},
                     description=f"MTCNN {what}, {side}x{side} crops, facenet-pytorch trained weights")


MTCNN_PNET = ModelSpec(
    name="mtcnn_pnet", family="mtcnn",
    inputs=(TensorSpec("images", ("batch", 3, "height", "width")),),
    outputs=("offsets", "face_logit"), profile=ProfileRange(min=1, opt=4, max=16),
    postprocess={"stage": "pnet"}, dims={"height": PNET_SIDE, "width": PNET_SIDE},
    description="MTCNN proposal net, fully convolutional (dynamic H, W), facenet-pytorch trained weights")
MTCNN_RNET = _crop_spec("mtcnn_rnet", 24, ("offsets", "face_logit"), "refinement net")
MTCNN_ONET = _crop_spec("mtcnn_onet", 48, ("offsets", "landmarks", "face_logit"), "output net + 5 landmarks")


@register(MTCNN_PNET, weights=pnet_weights)
def mtcnn_pnet(*, initialise: bool = True) -> PNet:
    """P-Net (untrained unless the exporter loads its shipped weights; ``initialise`` is accepted
    for the zoo's factory signature: trained networks get no seeded init)."""
    return PNet().eval()


@register(MTCNN_RNET, weights=rnet_weights)
def mtcnn_rnet(*, initialise: bool = True) -> RNet:
    return RNet().eval()


@register(MTCNN_ONET, weights=onet_weights)
def mtcnn_onet(*, initialise: bool = True) -> ONet:
    return ONet().eval()


# the three-stage pipeline: members in stage order (no fusion, so no weights)
register_ensemble(EnsembleSpec(
    name="mtcnn", family="mtcnn",
    members=tuple(EnsembleMember(m, None) for m in ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet")),
    postprocess={}, description="MTCNN face detection: P-Net over a pyramid -> R-Net -> O-Net, 5 landmarks"))
