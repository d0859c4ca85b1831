"""Ptycho parity: the stitched object, reference path vs engine path.

Evaluation: one simulated scan (a grid of diffraction patterns at jittered float64 offsets).
Reference side: the PyTorch module's patches stitched HERE by a straightforward per-patch loop
in torch (complex128 canvas, ``torch.polar``, a 2-D Fourier phase ramp for sub-pixel shifts),
independent of the runtime's batched NumPy reassembly, with the ZOO's canonical options.
Engine side: the runtime pipeline's patches stitched by ``PtychoPipeline.stitch`` with the
options recorded in export.json, so a wrong ``stitch_crop_size`` there (off by one) or a
reassembly bug fails the gate. Checks: relative L2 error and PSNR of the stitched object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from batchforge.export.samples import SEED_EVAL
from batchforge.export.samples.ptycho import simulate_scan
from batchforge.parity.gate import register_family
from batchforge.parity.report import Check
from batchforge.parity.session import EvalItem, EvalSet, FamilyParity, ModelContext
from batchforge.runtime.post.ptycho import PtychoOptions
from batchforge.runtime.results import Result
from batchforge.runtime.spec import ModelSpec, parse_options

DEFAULT_GRID = 12  # 144 patterns


def _eval_set(grid: int) -> EvalSet:
    scan = simulate_scan(SEED_EVAL, grid=grid)
    items = tuple(EvalItem(f"scan/p{i:04d}", pattern) for i, pattern in enumerate(scan.diffraction))
    extra = {"offsets": scan.offsets, "object_shape": scan.object_shape, "truth": scan.obj}
    return EvalSet(f"ptycho-grid{grid}", items, extra)


def torch_stitch(amplitude: np.ndarray, phase: np.ndarray, offsets: np.ndarray,
                 object_shape: tuple[int, int], options: PtychoOptions) -> np.ndarray:
    """Reference reassembly: one patch at a time, averaged by coverage (complex128)."""
    patches = torch.polar(torch.from_numpy(amplitude).double(), torch.from_numpy(phase).double())
    size = patches.shape[-1]
    crop = options.stitch_crop_size
    start = (size - crop) // 2
    total = torch.zeros(object_shape, dtype=torch.complex128)
    weight = torch.zeros(object_shape, dtype=torch.float64)
    freq = torch.fft.fftfreq(size, dtype=torch.float64)
    for patch, offset in zip(patches, torch.from_numpy(offsets)):
        if options.subpixel == "round":
            corner = torch.floor(offset + 0.5)
        else:
            corner = torch.floor(offset)
            fy, fx = (offset - corner).tolist()
            if fy or fx:
                ramp = torch.exp(-2j * math.pi * (fy * freq[:, None] + fx * freq[None, :]))
                patch = torch.fft.ifft2(torch.fft.fft2(patch) * ramp)
        y, x = (int(v) + start for v in corner.tolist())
        total[y : y + crop, x : x + crop] += patch[start : start + crop, start : start + crop]
        weight[y : y + crop, x : x + crop] += 1.0
    return torch.where(weight > 0, total / weight.clamp_min(1.0), torch.zeros_like(total)).numpy()


def object_errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(relative L2 error, PSNR in dB with the reference's peak magnitude) over the canvas."""
    diff = got.astype(np.complex128) - ref
    rel = float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30))
    support = (np.abs(ref) > 0) | (np.abs(got) > 0)
    mse = float(np.mean(np.abs(diff[support]) ** 2)) if support.any() else 0.0
    peak = float(np.abs(ref).max())
    psnr = math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
    return rel, psnr


class PtychoParity(FamilyParity):
    family = "ptycho"

    def eval_set(self, spec: ModelSpec, size: int | None) -> EvalSet:
        grid = max(2, math.ceil(math.sqrt(size))) if size else DEFAULT_GRID
        return _eval_set(grid)

    def reference_inputs(self, item: EvalItem, spec: ModelSpec) -> tuple[dict[str, np.ndarray], Any]:
        return {spec.inputs[0].name: np.asarray(item.data, np.float32)}, None

    def task_checks(self, ctx: ModelContext) -> list[Check]:
        spec = ctx.reference_spec
        options = parse_options(PtychoOptions, spec.postprocess, "ptycho postprocess options")
        offsets, shape = ctx.eval_set.extra["offsets"], ctx.eval_set.extra["object_shape"]
        amp_name, phase_name = spec.outputs[:2]
        ref = torch_stitch(ctx.reference.raw[amp_name], ctx.reference.raw[phase_name], offsets, shape,
                           options)
        pipeline = ctx.engine.pipeline
        engine = pipeline.stitch(pipeline.patches(ctx.engine.raw), offsets, shape).object  # type: ignore[attr-defined]
        if engine.shape != ref.shape:
            return [Check("stitched_shape", math.inf, ctx.limits["stitched_rel_error"],
                          f"reference {ref.shape}, engine {engine.shape}")]
        rel, psnr = object_errors(engine, ref)
        truth = ctx.eval_set.extra["truth"]
        covered = np.abs(ref) > 0
        fidelity = np.linalg.norm((ref - truth)[covered]) / np.linalg.norm(truth[covered])
        detail = (f"{len(offsets)} patches on a {shape[0]}x{shape[1]} object, crop "
                  f"{options.stitch_crop_size}, {options.subpixel} sub-pixel shifts")
        return [
            Check("stitched_rel_error", rel, ctx.limits["stitched_rel_error"], detail),
            Check("stitched_psnr_db", psnr, ctx.limits["stitched_psnr_db"],
                  f"reference vs simulated truth rel error {fidelity:.3f} (untrained init)"),
        ]

    def batch_quantities(self, results: Sequence[Result]) -> dict[str, list[np.ndarray]]:
        return {"amplitude": [r.amplitude for r in results],  # type: ignore[attr-defined]
                "phase": [r.phase for r in results]}  # type: ignore[attr-defined]


register_family(PtychoParity())
