"""Ptychography: a U-Net-style CNN from a 64x64 diffraction amplitude to an object patch.

In the spirit of PtychoNN: one diffraction amplitude (DC centred) in, the object patch under
the probe out as amplitude (sigmoid, 0..1) and phase (pi * tanh, radians). The log1p of the
amplitude is taken in the graph (diffraction spans orders of magnitude), followed by a
BatchNorm whose statistics come from simulated patterns, so the ONNX input is the raw
amplitude. Patches are stitched by the runtime (``batchforge.runtime.post.ptycho``).

Initialisation without weights: seeded, BatchNorm statistics recomputed on simulated
diffraction patterns, and the final 1x1 convolution fitted in closed form (ridge regression of
the pre-activations onto logit(true amplitude) and atanh(true phase / pi) of simulated
object patches), rescaled to the targets' spread, so the outputs have the object's value
ranges and variation instead of a saturated sigmoid or a constant.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from batchforge.export.registry import register
from batchforge.export.samples import SEED_INIT
from batchforge.export.samples.ptycho import PATCH, object_window, simulate_scan
from batchforge.export.zoo.init import recalibrate_batchnorm, reinit_zero_weights, seeded
from batchforge.runtime.spec import ModelSpec, ProfileRange, TensorSpec

WIDTHS = (16, 32, 64)
BOTTLENECK = 128
INIT_GRID = 8  # 64 simulated patterns for BatchNorm statistics and the readout fit
FIT_RIDGE = 1e-3

SPEC = ModelSpec(
    name="ptycho",
    family="ptycho",
    inputs=(TensorSpec("diffraction", ("batch", PATCH, PATCH)),),
    outputs=("amplitude", "phase"),
    profile=ProfileRange(min=1, opt=32, max=64),
    preprocess=None,
    postprocess={"stitch_crop_size": 32, "stitch_batch_size": 256, "subpixel": "fourier"},
    description="U-Net: 64x64 diffraction amplitude -> object patch amplitude + phase; batched stitching",
)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class PtychoUNet(nn.Module):
    """(B, 64, 64) diffraction amplitude -> (amplitude (B, 64, 64), phase (B, 64, 64))."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        self.encoders = nn.ModuleList()
        width = 1
        for w in WIDTHS:
            self.encoders.append(_block(width, w))
            width = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(width, BOTTLENECK)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        width = BOTTLENECK
        for w in reversed(WIDTHS):
            self.ups.append(nn.ConvTranspose2d(width, w, 2, stride=2))
            self.decoders.append(_block(2 * w, w))
            width = w
        self.out = nn.Conv2d(width, 2, 1)

    def features(self, diffraction: torch.Tensor) -> torch.Tensor:
        x = self.norm(torch.log1p(diffraction.clamp_min(0.0)).unsqueeze(1))
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return x

    def forward(self, diffraction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.out(self.features(diffraction))
        return torch.sigmoid(y[:, 0]), math.pi * torch.tanh(y[:, 1])


def _init_data() -> tuple[torch.Tensor, np.ndarray]:
    """Simulated diffraction (N, 64, 64) and the true object patches (N, 64, 64) complex."""
    scan = simulate_scan(SEED_INIT, grid=INIT_GRID)
    truth = np.stack([object_window(scan.obj, off, PATCH) for off in scan.offsets])
    return torch.from_numpy(scan.diffraction), truth


@torch.no_grad()
def fit_readout(model: PtychoUNet, diffraction: torch.Tensor, truth: np.ndarray) -> None:
    """Ridge fit of ``model.out`` onto logit(|truth|) and atanh(angle(truth) / pi)."""
    feats = torch.cat([model.features(diffraction[i : i + 16]) for i in range(0, len(diffraction), 16)])
    x = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).double().numpy()
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    amplitude = np.clip(np.abs(truth), 0.01, 0.99).ravel()
    phase = np.clip(np.angle(truth) / math.pi, -0.99, 0.99).ravel()
    targets = np.stack([np.log(amplitude / (1 - amplitude)), np.arctanh(phase)], axis=1)
    gram = x.T @ x
    gram += FIT_RIDGE * np.trace(gram) / len(gram) * np.eye(len(gram))
    solution = np.linalg.solve(gram, x.T @ targets)  # (C + 1, 2)
    # Random features explain little of the truth, so the fit shrinks towards the mean; a
    # trained network's outputs vary like the object does. Match the targets' spread.
    predicted = x @ solution
    gain = targets.std(axis=0) / np.maximum(predicted.std(axis=0), 1e-12)
    solution[:-1] *= gain
    solution[-1] = targets.mean(axis=0) - (x[:, :-1] @ solution[:-1]).mean(axis=0)
    model.out.weight.copy_(torch.from_numpy(solution[:-1].T).float()[:, :, None, None])
    model.out.bias.copy_(torch.from_numpy(solution[-1]).float())


@register(SPEC)
def ptycho(*, initialise: bool = True) -> PtychoUNet:
    model = seeded(PtychoUNet, 31)
    if initialise:
        reinit_zero_weights(model, 31)
        diffraction, truth = _init_data()
        recalibrate_batchnorm(model, [diffraction[i : i + 16] for i in range(0, len(diffraction), 16)])
        fit_readout(model, diffraction, truth)
    return model.eval()
