"""Keypoints parity: keypoint pixel error and score error on synthetic animals.

Reference side: the PyTorch module on torch-preprocessed inputs, decoded here with torch ops
written independently of the runtime (argmax, DARK/quarter refinement, cell -> input -> image
mapping through the torch-side letterbox geometry), with the ZOO's canonical options. Engine
side: the runtime pipeline end to end with the options recorded in the artifact's export.json,
so a decode bug (x/y swapped) or a config fault (another refinement, wrong keypoint names)
fails the gate. Pixel errors are in original-image pixels.

Near-tied peaks. A joint whose reference heatmap has another cell within twice the tier's raw
tolerance of its peak (``2 * raw_max_rel * max|map|``) is *ambiguous*: an engine inside the tier
may legitimately pick either cell, and which one it picks depends on rounding (library version,
AVX2 vs AVX-512 kernels), not on correctness. Such a joint is compared by heatmap value at the
reference peak (within the raw tolerance), and its pixel error is measured with both sides
decoded from the engine's peak cell, which must be one of the reference's tied cells. A joint
with one clear peak keeps the plain pixel limit. The ambiguous count is reported and bounded, so
heatmaps too flat for a tier fail instead of passing on values alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from batchforge.export.samples import SEED_EVAL
from batchforge.export.samples.keypoints import sample_images
from batchforge.parity.gate import register_family
from batchforge.parity.report import Check
from batchforge.parity.session import EvalItem, EvalSet, FamilyParity, ModelContext
from batchforge.runtime.post.keypoints import KeypointsOptions
from batchforge.runtime.preprocess import Geometry
from batchforge.runtime.results import Result
from batchforge.runtime.spec import ModelSpec, parse_options

DEFAULT_EVAL = 32


def _eval_set(count: int) -> EvalSet:
    items = tuple(EvalItem(name, image) for name, image in sample_images(count, SEED_EVAL))
    return EvalSet(f"keypoints-{count}", items)


def _gaussian_blur(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur of (B, K, H, W) float64 maps, mirrored borders (no edge repeat)."""
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    taps = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    batch, joints, height, width = maps.shape
    x = F.pad(maps.reshape(batch * joints, 1, height, width), [kernel // 2] * 4, mode="reflect")
    x = F.conv2d(x, weights.view(1, 1, 1, kernel))
    x = F.conv2d(x, weights.view(1, 1, kernel, 1))
    return x.reshape(batch, joints, height, width)


def torch_refine(heatmaps: torch.Tensor, col: torch.Tensor, row: torch.Tensor, refine: str,
                 kernel: int) -> torch.Tensor:
    """Sub-pixel (x, y) cell coordinates of the peaks at integer (col, row), (B, K, 2)."""
    height, width = heatmaps.shape[2:]
    xy = torch.stack([col, row], dim=-1).double()
    if refine == "none":
        return xy
    maps = heatmaps.double()
    if refine == "dark":
        maps = torch.log(_gaussian_blur(maps, kernel).clamp_min(1e-10))
    b = torch.arange(maps.shape[0])[:, None].expand_as(col)
    k = torch.arange(maps.shape[1])[None, :].expand_as(col)

    def at(dx: int, dy: int) -> torch.Tensor:
        return maps[b, k, (row + dy).clamp(0, height - 1), (col + dx).clamp(0, width - 1)]

    inside = (col >= 1) & (col <= width - 2) & (row >= 1) & (row <= height - 2)
    if refine == "quarter":
        step = torch.stack([torch.sign(at(1, 0) - at(-1, 0)), torch.sign(at(0, 1) - at(0, -1))], dim=-1)
        return xy + torch.where(inside[..., None], 0.25 * step, torch.zeros_like(step))
    grad = torch.stack([at(1, 0) - at(-1, 0), at(0, 1) - at(0, -1)], dim=-1) / 2
    dxx = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
    dyy = at(0, 1) - 2 * at(0, 0) + at(0, -1)
    dxy = (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1)) / 4
    hessian = torch.stack([torch.stack([dxx, dxy], -1), torch.stack([dxy, dyy], -1)], -2)
    usable = inside & (dxx < 0) & (torch.linalg.det(hessian) > 0)
    eye = torch.eye(2, dtype=torch.float64).expand_as(hessian)
    step = -torch.linalg.solve(torch.where(usable[..., None, None], hessian, eye), grad)
    return xy + torch.where(usable[..., None], step.clamp(-1.0, 1.0), torch.zeros_like(step))


def torch_decode(heatmaps: np.ndarray, geometries: Sequence[Geometry], input_hw: tuple[int, int],
                 options: KeypointsOptions, start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference decode: (keypoints (B, K, 2) image pixels, scores (B, K)), torch ops only.

    ``start`` (B, K) flat cell indices to refine from instead of each map's first maximum (the
    ambiguous joints' engine cells); scores stay the maps' maxima.
    """
    maps = torch.from_numpy(heatmaps)
    height, width = maps.shape[2:]
    scores, index = maps.flatten(2).max(dim=-1)  # first maximum on ties, like the runtime
    if start is not None:
        index = torch.from_numpy(start)
    cells = torch_refine(maps, index % width, index // width, options.refine, options.dark_kernel)
    stride = torch.tensor([input_hw[1] / width, input_hw[0] / height], dtype=torch.float64)
    model_xy = (cells + 0.5) * stride
    scale = torch.tensor([[g.scale_x, g.scale_y] for g in geometries], dtype=torch.float64)
    pad = torch.tensor([[g.pad_x, g.pad_y] for g in geometries], dtype=torch.float64)
    image_xy = (model_xy - pad[:, None, :]) / scale[:, None, :]
    return image_xy.numpy(), scores.numpy()


@dataclass(frozen=True)
class PeakTies:
    """Near-tied reference peaks of (B, K) joints and where the engine's peaks fall among them."""

    margin: float  # relative to each map's max |value|
    ambiguous: np.ndarray  # (B, K) bool: another reference cell within the margin of the peak
    engine_tied: np.ndarray  # (B, K) bool: the engine's peak cell is one of the tied cells
    start: np.ndarray  # (B, K) flat cell to decode from: the engine's where tied and ambiguous
    value_error: float  # max |engine - reference| at the reference peak / max |map|, ambiguous joints


def peak_ties(reference: np.ndarray, engine: np.ndarray, raw_tolerance: float) -> PeakTies:
    """Finds joints whose reference peak an engine within ``raw_tolerance`` may legitimately move.

    Two engine values each within ``raw_tolerance * max|map|`` of the reference can swap the
    order of two reference cells only if those differ by at most twice that, so a cell within
    ``2 * raw_tolerance * max|map|`` of the peak is tied with it.
    """
    ref = reference.reshape(*reference.shape[:2], -1).astype(np.float64)
    eng = engine.reshape(*engine.shape[:2], -1).astype(np.float64)
    scale = np.abs(ref).max(axis=-1)
    margin = 2.0 * raw_tolerance
    peak = ref.argmax(axis=-1)  # first maximum, as torch_decode and the runtime
    top = np.take_along_axis(ref, peak[..., None], -1)[..., 0]
    tied = ref >= (top - margin * scale)[..., None]
    ambiguous = tied.sum(axis=-1) > 1
    eng_peak = eng.argmax(axis=-1)
    engine_tied = np.take_along_axis(tied, eng_peak[..., None], -1)[..., 0]
    start = np.where(ambiguous & engine_tied, eng_peak, peak)
    at_peak = np.abs(np.take_along_axis(eng, peak[..., None], -1)[..., 0] - top) / np.where(scale > 0, scale, 1.0)
    value_error = float(at_peak[ambiguous].max()) if ambiguous.any() else 0.0
    return PeakTies(margin, ambiguous, engine_tied, start, value_error)


class KeypointsParity(FamilyParity):
    family = "keypoints"

    def eval_set(self, spec: ModelSpec, size: int | None) -> EvalSet:
        return _eval_set(size or DEFAULT_EVAL)

    def task_checks(self, ctx: ModelContext) -> list[Check]:
        spec = ctx.reference_spec
        options = parse_options(KeypointsOptions, spec.postprocess, "keypoints postprocess options")
        input_hw = (int(spec.inputs[0].shape[-2]), int(spec.inputs[0].shape[-1]))
        ref_maps = ctx.reference.raw[spec.outputs[0]]
        ties = peak_ties(ref_maps, ctx.engine.raw[ctx.spec.outputs[0]], ctx.limits["raw_max_rel"].value)
        ref_xy, ref_scores = torch_decode(ref_maps, ctx.reference.metas, input_hw, options, ties.start)
        results = ctx.engine.pipeline.postprocess(ctx.engine.raw, ctx.engine.prepared)
        eng_xy = np.stack([r.keypoints for r in results])  # type: ignore[attr-defined]
        eng_scores = np.stack([r.scores for r in results])  # type: ignore[attr-defined]
        errors = np.linalg.norm(eng_xy - ref_xy, axis=-1)
        worst = np.unravel_index(int(np.argmax(errors)), errors.shape)
        score_err = np.abs(eng_scores.astype(np.float64) - ref_scores)
        names = tuple(getattr(results[0], "names", ()))
        names_ok = float(names == tuple(options.keypoint_names))
        where = (f"worst: item {worst[0]} joint {worst[1]}"
                 + (" (ambiguous)" if ties.ambiguous[worst] else ""))
        count, total = int(ties.ambiguous.sum()), ties.ambiguous.size
        outside = int((ties.ambiguous & ~ties.engine_tied).sum())
        return [
            Check("keypoint_px_error_max", float(errors.max()), ctx.limits["keypoint_px_error_max"],
                  f"image pixels over {errors.size} joints of {len(errors)} images, mean "
                  f"{errors.mean():.3g}; {where}; refine {options.refine}; {count} ambiguous joints "
                  f"decoded from the engine's peak cell ({outside} of them outside the reference's "
                  "tied cells, decoded from the reference peak)"),
            Check("keypoint_ambiguous_fraction", count / total, ctx.limits["keypoint_ambiguous_fraction"],
                  f"{count} of {total} joints have another reference cell within 2 x raw tolerance "
                  f"({ties.margin:.3g} of the map's max |value|) of the peak"),
            Check("ambiguous_peak_rel_error_max", ties.value_error, ctx.limits["raw_max_rel"],
                  f"|engine - reference| at the reference peak / map max |value| over the {count} "
                  "ambiguous joints" if count else "no ambiguous joints"),
            Check("score_abs_error_max", float(score_err.max()), ctx.limits["score_abs_error_max"],
                  f"heatmap maxima in {ref_scores.min():.3g}..{ref_scores.max():.3g}"),
            Check("keypoint_names_match", names_ok, ctx.limits["keypoint_names_match"],
                  "engine names equal the zoo's" if names_ok else f"engine names {list(names)[:4]}..."),
        ]

    def batch_quantities(self, results: Sequence[Result]) -> dict[str, list[np.ndarray]]:
        return {"keypoints": [r.keypoints for r in results],  # type: ignore[attr-defined]
                "scores": [r.scores for r in results]}  # type: ignore[attr-defined]


register_family(KeypointsParity())
