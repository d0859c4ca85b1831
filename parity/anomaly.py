"""Anomaly parity: image score, anomaly map, defect regions and the tiled path.

Reference side: the PyTorch module on torch-preprocessed inputs. Its maps are decoded into
defect regions with the runtime's own defects code (``find_defects``), run with the ZOO's
canonical options: an independent re-implementation of hysteresis, connected components,
merging and shape filters in torch would be a second copy of the same OpenCV-shaped
algorithm, not an independent check. What this still catches is everything around it:
the engine side decodes with the options recorded in the artifact's export.json, so a config
fault there (hysteresis low/high swapped, a wrong threshold, a dropped step) moves the regions
and fails ``region_iou_min``; the boxes are mapped to image pixels with the torch-side
geometry on the reference side and the runtime's on the engine side.

The tiled path (images larger than the model input) is checked on two large images: the
engine pipeline end to end against the reference module run on the same tiles (cut with
``runtime.tiling``, preprocessed with torch) and blended with the runtime's blending.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from batchforge.export.reference import TorchRunner, torch_preprocess
from batchforge.export.registry import ZOO
from batchforge.export.samples import SEED_EVAL
from batchforge.export.samples.anomaly import LARGE_SIZE, labelled_set
from batchforge.export.zoo.anomaly import auroc
from batchforge.parity.gate import register_family
from batchforge.parity.report import Check
from batchforge.parity.session import EvalItem, EvalSet, FamilyParity, ModelContext
from batchforge.runtime.pipelines.anomaly import AnomalyResult, DefectRegion, regions_to_image
from batchforge.runtime.post.anomaly import AnomalyOptions, find_defects
from batchforge.runtime.preprocess import Geometry
from batchforge.runtime.results import ErrorRecord, Result
from batchforge.runtime.spec import ModelSpec, parse_options
from batchforge.runtime.tiling import blend_tiles, blend_weights, cut_tiles, tile_grid
from batchforge.tolerances import at_most

DEFAULT_EVAL = 32
TILED_IMAGES = 2


def _eval_set(count: int) -> EvalSet:
    samples = labelled_set(count, SEED_EVAL)
    items = tuple(EvalItem(s.name, s.image) for s in samples)
    return EvalSet(f"anomaly-{count}", items, {"labels": tuple(s.is_defective for s in samples)})


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_regions(ref: Sequence[DefectRegion], eng: Sequence[DefectRegion]) -> list[float]:
    """Greedy one-to-one matching by box IoU; one IoU per region, 0 for every unmatched one."""
    if not ref or not eng:
        return [0.0] * (len(ref) + len(eng))
    iou = box_iou(np.array([r.bbox for r in ref]), np.array([r.bbox for r in eng]))
    matched = []
    while iou.size and iou.max() > 0:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        matched.append(float(iou[i, j]))
        iou[i, :], iou[:, j] = -1.0, -1.0
    return matched + [0.0] * (len(ref) + len(eng) - 2 * len(matched))


def map_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Max of |got - ref| / max(|ref|, 1): absolute up to the good level (1.0), relative above.

    Map units are "times the 99.9th percentile of good pixels": what decides regions and the
    image verdict lives around 1; an error of 0.3 on a score of 5 (an obvious defect) is 6%.
    """
    ref64 = ref.astype(np.float64)
    return float(np.max(np.abs(got.astype(np.float64) - ref64) / np.maximum(np.abs(ref64), 1.0)))


def _boxes(result: AnomalyResult) -> np.ndarray:
    return np.array([r.bbox for r in result.regions], np.float64).reshape(-1, 4)


class AnomalyParity(FamilyParity):
    family = "anomaly"

    def eval_set(self, spec: ModelSpec, size: int | None) -> EvalSet:
        return _eval_set(size or DEFAULT_EVAL)

    def task_checks(self, ctx: ModelContext) -> list[Check]:
        ref_spec = ctx.reference_spec
        options = parse_options(AnomalyOptions, ref_spec.postprocess, "reference anomaly options")
        ref_maps = ctx.reference.raw[ref_spec.outputs[0]][:, 0]
        ref_scores = ctx.reference.raw[ref_spec.outputs[1]]
        results: list[AnomalyResult] = ctx.engine.pipeline.postprocess(ctx.engine.raw, ctx.engine.prepared)  # type: ignore[assignment]
        input_shape = (ref_spec.preprocess.height, ref_spec.preprocess.width)  # type: ignore[union-attr]
        ref_regions = [regions_to_image(find_defects(m, options.defects), m.shape, input_shape, geo)
                       for m, geo in zip(ref_maps, ctx.reference.metas)]
        eng_scores = np.array([r.score for r in results])
        map_err = max(map_error(r.anomaly_map, m) for r, m in zip(results, ref_maps))
        ious = [iou for ref, r in zip(ref_regions, results) for iou in match_regions(ref, r.regions)]
        n_ref, n_eng = sum(map(len, ref_regions)), sum(len(r.regions) for r in results)
        checks = [
            Check("score_error", map_error(eng_scores, ref_scores), ctx.limits["score_error"],
                  f"{len(results)} images, scores {ref_scores.min():.3f}..{ref_scores.max():.3f}"),
            Check("map_error", map_err, ctx.limits["map_error"],
                  f"map peak {float(ref_maps.max()):.3f}"),
            Check("region_iou_min", min(ious, default=1.0), ctx.limits["region_iou_min"],
                  f"{n_ref} reference / {n_eng} engine regions, mean IoU "
                  f"{np.mean(ious) if ious else 1.0:.4f} (unmatched count as 0)"),
        ]
        if options.image_threshold is not None:
            ref_flags = ref_scores >= options.image_threshold
            agreement = float(np.mean([r.is_anomalous == f for r, f in zip(results, ref_flags)]))
            checks.append(Check("decision_agreement", agreement, ctx.limits["decision_agreement"],
                                f"anomalous at score >= {options.image_threshold:g}"))
        labels = np.array(ctx.eval_set.extra["labels"])
        if ctx.name in ZOO and 0 < labels.sum() < len(labels):
            # the zoo model must find the generated defects, or the checks above prove little
            checks.append(Check("reference_image_auroc", auroc(ref_scores, labels),
                                ctx.limits["reference_image_auroc"],
                                f"{int(labels.sum())} defective / {int((~labels).sum())} good images"))
        return checks + self._tiled_checks(ctx, options)

    def _tiled_checks(self, ctx: ModelContext, options: AnomalyOptions) -> list[Check]:
        ref_spec = ctx.reference_spec
        assert ref_spec.preprocess is not None
        pre = ref_spec.preprocess
        images = [s.image for s in labelled_set(TILED_IMAGES, SEED_EVAL + 1, size=LARGE_SIZE)]
        results: list[AnomalyResult] = ctx.engine.pipeline(images)  # type: ignore[assignment]
        failed = [r for r in results if isinstance(r, ErrorRecord)]  # pipeline(images) guards each item
        if failed:
            return [Check("tiled_items_failed", float(len(failed)),
                          at_most(0.0, "every tiled image must give a result"),
                          f"{len(failed)} of {len(images)}: {failed[0].error_type}: {failed[0].message}")]
        runner = TorchRunner(ctx.session.module(ctx.name), ref_spec)
        weights = blend_weights(pre.height, pre.width, options.tiling.overlap_px, options.tiling.blend)
        worst, ious = 0.0, []
        with runner:
            for image, result in zip(images, results):
                grid = tile_grid(*image.shape[:2], pre.height, pre.width, options.tiling.overlap_px)
                tiles = torch.stack([torch_preprocess(t, pre)[0] for t in cut_tiles(image, grid)]).numpy()
                maps = runner.infer({ref_spec.inputs[0].name: tiles})[ref_spec.outputs[0]][:, 0]
                ref_map = blend_tiles(maps, grid, weights)
                worst = max(worst, map_error(result.anomaly_map, ref_map))
                identity = Geometry(*ref_map.shape, 1.0, 1.0, 0.0, 0.0)
                ref = regions_to_image(find_defects(ref_map, options.defects), ref_map.shape,
                                       ref_map.shape, identity)
                ious += match_regions(ref, result.regions)
        detail = f"{TILED_IMAGES} images of {LARGE_SIZE[0]}x{LARGE_SIZE[1]}, {results[0].tiles} tiles each"
        return [Check("tiled_map_error", worst, ctx.limits["map_error"], detail),
                Check("tiled_region_iou_min", min(ious, default=1.0), ctx.limits["region_iou_min"], detail)]

    def batch_quantities(self, results: Sequence[Result]) -> dict[str, list[np.ndarray]]:
        typed: Sequence[AnomalyResult] = results  # type: ignore[assignment]
        return {"score": [np.array([r.score]) for r in typed],
                "map": [r.anomaly_map for r in typed],
                "boxes": [_boxes(r) for r in typed]}


register_family(AnomalyParity())
