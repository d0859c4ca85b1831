"""The dense, anchor-free detector shared by the ``detector`` and ``facepose`` zoo models.

Architecture (YOLOv8/FCOS-like, small enough for CPU parity runs at 640x640):

- a torchvision MobileNetV3 backbone tapped at strides 8, 16 and 32;
- a light FPN: 1x1 lateral convs to ``width`` channels, nearest-neighbour top-down path, a
  depthwise-separable 3x3 smoothing conv per level;
- one head per level: a depthwise-separable stem, then 1x1 predictions of class logits, four
  log-distances (left, top, right, bottom, in stride units) and optionally a 6-value pose code.

Outputs, levels concatenated in stride order, each row-major (``runtime.post.detection``):
``boxes`` = exp(log-distances) (batch, N, 4), ``scores`` = sigmoid(logits) (batch, N, C) and
``pose`` (batch, N, 6). There is no NMS in the graph: the batch axis stays dynamic and the
data-dependent part runs in NumPy.

Activation-calibrated init: random heads give logits that are all near zero (every score 0.5)
or hugely spread. ``calibrate_heads`` measures each prediction channel on synthetic images and
rescales its 1x1 conv so the channel has a chosen mean and spread, with the score bias set so
that a chosen fraction of (location, class) pairs clears the score threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation


def _separable(channels: int, norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    return nn.Sequential(
        Conv2dNormActivation(channels, channels, 3, groups=channels, norm_layer=norm,
                             activation_layer=nn.SiLU),
        Conv2dNormActivation(channels, channels, 1, norm_layer=norm, activation_layer=nn.SiLU),
    )


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(16, channels)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling as expand + reshape.

    Same values as ``F.interpolate(scale_factor=2, mode="nearest")``, but without an ONNX
    Resize: onnxruntime's FP16 converter keeps Resize in FP32 and, when two Resize nodes share
    their ``scales`` initializer (the dynamo exporter shares equal constants), emits two Cast
    nodes with the same output name, an invalid graph.
    """
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


class LevelHead(nn.Module):
    """Stem + 1x1 predictions for one pyramid level."""

    def __init__(self, width: int, num_classes: int, pose: bool, coherence: int) -> None:
        super().__init__()
        # GroupNorm (as in FCOS heads) normalises each image on its own, so how many anchors
        # clear the score threshold varies from image to image less than with BatchNorm
        self.stem = _separable(width, _group_norm)
        # A trained head answers alike on neighbouring anchors of one object, so its raw
        # candidates come in clusters that NMS thins out. A random head answers each anchor on
        # its own; a box mean over ``coherence`` x ``coherence`` anchors restores the clusters.
        self.coherence = nn.AvgPool2d(coherence, stride=1, padding=coherence // 2,
                                      count_include_pad=False)
        self.cls = nn.Conv2d(width, num_classes, 1)
        self.box = nn.Conv2d(width, 4, 1)
        self.pose = nn.Conv2d(width, 6, 1) if pose else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.coherence(self.stem(x))
        outs = [self.box(x), self.cls(x)]
        if self.pose is not None:
            outs.append(self.pose(x))
        return outs


class DenseDetector(nn.Module):
    """Backbone taps -> FPN -> per-level heads -> dense ``boxes``, ``scores`` (, ``pose``)."""

    def __init__(self, features: nn.Sequential, taps: Sequence[int], tap_channels: Sequence[int],
                 num_classes: int, *, width: int = 64, pose: bool = False, coherence: int = 5) -> None:
        super().__init__()
        if len(taps) != 3 or len(tap_channels) != 3:
            raise ValueError("DenseDetector needs three backbone taps (strides 8, 16, 32)")
        self.features = features[: taps[-1] + 1]
        self.taps = tuple(taps)
        self.lateral = nn.ModuleList(Conv2dNormActivation(c, width, 1, activation_layer=None)
                                     for c in tap_channels)
        self.smooth = nn.ModuleList(_separable(width) for _ in tap_channels)
        self.heads = nn.ModuleList(LevelHead(width, num_classes, pose, coherence) for _ in tap_channels)

    def pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        """FPN features at strides 8, 16, 32."""
        tapped = []
        x = images
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                tapped.append(x)
        laterals = [conv(t) for conv, t in zip(self.lateral, tapped)]
        merged = [laterals[2]]
        for lateral in (laterals[1], laterals[0]):
            merged.insert(0, lateral + upsample2x(merged[0]))
        return [smooth(m) for smooth, m in zip(self.smooth, merged)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        per_level = [head(p) for head, p in zip(self.heads, self.pyramid(images))]
        # (batch, channels, h, w) -> (batch, h*w, channels); flatten keeps the batch dynamic
        outputs = [torch.cat([level[k].flatten(2) for level in per_level], dim=2).transpose(1, 2)
                   for k in range(len(per_level[0]))]
        boxes, logits = outputs[0], outputs[1]
        result = (torch.exp(boxes), torch.sigmoid(logits))
        return result + tuple(outputs[2:])


@dataclass(frozen=True)
class ChannelTarget:
    """Wanted mean and standard deviation of a prediction channel's pre-activation value."""

    mean: float
    std: float


@torch.no_grad()
def calibrate_heads(model: DenseDetector, batches: Iterable[torch.Tensor], *, score_std: float,
                    score_fraction: float, score_threshold: float, box: ChannelTarget,
                    pose: Sequence[ChannelTarget] = ()) -> dict[str, float]:
    """Rescales every level's 1x1 prediction convs to the wanted activation statistics.

    Each channel ``z = w.f + b`` measured over all locations of ``batches`` is mapped to
    ``(z - mean) / std * target.std + target.mean`` by scaling ``w`` and resetting ``b``. Class
    logits get ``score_std`` and one shared mean chosen so that ``score_fraction`` of all
    (location, class) values exceed ``logit(score_threshold)``.

    Returns:
        The measured fraction above the threshold after calibration (on ``batches``).
    """
    convs = {name: [getattr(h, name) for h in model.heads] for name in ("cls", "box", "pose")}
    captured: dict[int, list[torch.Tensor]] = {}
    hooks = [conv.register_forward_hook(
        lambda _m, _i, out, key=id(conv): captured.setdefault(key, []).append(
            out.transpose(0, 1).flatten(1)))
        for group in convs.values() for conv in group if conv is not None]
    batches = list(batches)
    try:
        for batch in batches:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    values = {key: torch.cat(parts, dim=1) for key, parts in captured.items()}  # (channels, samples)
    # per-channel (mean, std) of every prediction conv
    stats = {key: (v.mean(dim=1), v.std(dim=1).clamp_min(1e-6)) for key, v in values.items()}
    standardised = [(values[id(c)] - stats[id(c)][0][:, None]) / stats[id(c)][1][:, None]
                    for c in convs["cls"]]
    pooled = torch.cat([s.flatten() for s in standardised])
    logit = torch.logit(torch.tensor(score_threshold, dtype=torch.float64)).item()
    # quantile() is limited to 2**24 values: a strided subsample keeps it exact enough
    step = pooled.numel() // (1 << 24) + 1
    q = torch.quantile(pooled[::step].double(), 1.0 - score_fraction).item()
    score = ChannelTarget(logit - q * score_std, score_std)
    for conv in convs["cls"]:
        _retarget(conv, stats[id(conv)], [score] * conv.out_channels)
    for conv in convs["box"]:
        _retarget(conv, stats[id(conv)], [box] * 4)
    for conv in convs["pose"]:
        if conv is not None:
            _retarget(conv, stats[id(conv)], list(pose))
    above = sum(int((s * score_std + score.mean > logit).sum()) for s in standardised)
    return {"fraction_above_threshold": above / pooled.numel(), "score_logit_mean": score.mean}


def _retarget(conv: nn.Conv2d, stats: tuple[torch.Tensor, torch.Tensor],
              targets: Sequence[ChannelTarget]) -> None:
    mean, std = stats
    for c, target in enumerate(targets):
        gain = target.std / std[c].item()
        conv.weight[c].mul_(gain)
        conv.bias[c] = (conv.bias[c] - mean[c]) * gain + target.mean


@dataclass(frozen=True)
class InitTargets:
    """What the activation-calibrated init aims for (see ``calibrate_heads``)."""

    score_fraction: float
    score_std: float
    box: ChannelTarget
    pose: tuple[ChannelTarget, ...] = ()


def initialise(model: DenseDetector, images: Sequence[torch.Tensor], targets: InitTargets,
               score_threshold: float, *, batch: int = 4) -> dict[str, float]:
    """Seeded model -> activation-calibrated model (in eval mode).

    Damps the backbone's residual branches, recalibrates every BatchNorm on ``images``
    (preprocessed, CHW), then calibrates the prediction heads on the same images.

    Returns:
        The statistics reported by ``calibrate_heads``.
    """
    from batchforge.export.zoo.init import damp_residual_branches, recalibrate_batchnorm

    damp_residual_branches(model)
    stacked = torch.stack(list(images))
    batches = [stacked[i : i + batch] for i in range(0, len(stacked), batch)]
    recalibrate_batchnorm(model, batches)
    return calibrate_heads(model, batches, score_std=targets.score_std,
                           score_fraction=targets.score_fraction, score_threshold=score_threshold,
                           box=targets.box, pose=targets.pose)
