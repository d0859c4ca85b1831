"""Seeded, activation-calibrated initialisation for zoo models without downloadable weights.

A parity check on degenerate outputs (all-zero logits, identical embeddings) proves nothing,
so zoo models are (1) built under a fixed seed, (2) have zero-initialised heads re-initialised
and (3) have every BatchNorm's running statistics recomputed on deterministic synthetic images,
so each layer sees normalised activations and every output has a realistic spread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

# Torch threads of every forward pass a zoo init makes (BatchNorm statistics, fitted read-outs):
# how a convolution splits its work follows the thread count, and so do the last bits of what the
# init computes from it (measured: keypoints and facepose exported other weights with
# OMP_NUM_THREADS=1 than with the 2 threads of the 2-core machine the zoo's figures come from).
INIT_THREADS = 2


@contextlib.contextmanager
def init_threads() -> Iterator[None]:
    """Runs a zoo init on ``INIT_THREADS`` torch threads, whatever the machine has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(INIT_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Builds a module under a fixed torch seed without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    return module


def reinit_zero_weights(module: nn.Module, seed: int, std: float = 0.01) -> list[str]:
    """Re-initialises conv/linear weights that are all zero (e.g. zero-init heads).

    Returns:
        The names of the re-initialised parameters.
    """
    names = []
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, sub in module.named_modules():
            weight = getattr(sub, "weight", None)
            if isinstance(sub, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) and weight is not None \
                    and not torch.any(weight):
                weight.normal_(0.0, std, generator=generator)
                names.append(f"{name}.weight")
    return names


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recomputes BatchNorm running statistics as the exact average over ``batches``.

    Only the BatchNorm layers run in training mode: dropout and stochastic depth stay off, so the
    statistics are those of the eval-mode forward they will normalise, and they do not depend on
    the global RNG. (With the whole module in training mode, EfficientNet-B3's stochastic depth
    dropped random blocks while the statistics were gathered: its exported weights changed with
    whatever had drawn from the RNG earlier in the process, e.g. the export checks of the models
    before it.)

    Returns:
        The number of BatchNorm layers recalibrated (the module is left in eval mode).
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: exact mean over all batches
    module.eval()
    for m in norms:
        m.train()
    try:
        for batch in batches:
            module(batch)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        module.eval()
    return len(norms)


# With every residual branch at full scale, a randomly initialised BN-ResNet is chaotic: measured
# on reid_resnet50, a 1e-3 relative weight perturbation moved embeddings to cosine 0.961 and 1%
# input noise to 0.784 -- no trained network behaves like that, and precision checks on such a
# model would measure the chaos, not the engine. Trained ResNets/EfficientNets end up with small
# output-BN scales on their residual branches; at 0.1 the same perturbations give 0.99992 and
# 0.9996, and same-identity vs different-identity cosine separates (0.81 vs 0.12).
RESIDUAL_BRANCH_SCALE = 0.1


def damp_residual_branches(module: nn.Module, scale: float = RESIDUAL_BRANCH_SCALE) -> int:
    """Sets the output-BatchNorm scale of each torchvision residual branch to ``scale``.

    Handles ResNet BasicBlock/Bottleneck, EfficientNet MBConv/FusedMBConv and MobileNetV2/V3
    InvertedResidual (only blocks that add a skip connection).

    Returns:
        The number of branches damped.
    """
    from torchvision.models.efficientnet import FusedMBConv, MBConv
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
    from torchvision.models.resnet import BasicBlock, Bottleneck

    count = 0
    with torch.no_grad():
        for sub in module.modules():
            norm = None
            if isinstance(sub, Bottleneck):
                norm = sub.bn3
            elif isinstance(sub, BasicBlock):
                norm = sub.bn2
            elif isinstance(sub, (MBConv, FusedMBConv)) and sub.use_res_connect:
                norm = sub.block[-1][1]
            elif isinstance(sub, InvertedResidual) and sub.use_res_connect:
                norm = sub.conv[-1]
            elif isinstance(sub, InvertedResidualV3) and sub.use_res_connect:
                norm = sub.block[-1][1]
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.weight.fill_(scale)
                count += 1
    return count
