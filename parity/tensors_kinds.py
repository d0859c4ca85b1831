"""Checks of the output kinds a tensors spec declares beyond plain values and class scores.

``probability_map`` (a segmentation or text map of 0-1 values): a per-item cosine over the whole
map is noise where the map is background everywhere (issue #27: a text detector's map was about
1e-11 on photographs without text and failed fp32 and fp16 on that alone), so the map is judged
where the reference is above the output's ``floor``:

- ``map_cosine_min[o]``: the worst item's cosine over its elements above the floor (items with
  none are counted in the detail and judged by the other two);
- ``map_max_abs[o]``: the largest absolute error over elements above the floor;
- ``map_iou_min[o]``: the worst item's IoU of the two maps binarised at ``threshold``, leaving out
  elements whose reference is within the tier's ``map_max_abs`` of the threshold (they may flip);
  an item empty on both sides has IoU 1.

``boxes_scores`` (one tensor whose last axis mixes box channels in pixels with 0-1 score channels):
judged apart, so a large box error on a background anchor (143 px in issue #27) no longer hides
the score losses that matter:

- ``box_px[o]``: the largest box-channel error on anchors the reference scores at or above
  ``score_threshold`` (a background anchor's box is never used);
- ``score_abs[o]``: the largest score-channel error over every anchor;
- ``score_threshold_flips[o]``: the share of the reference's scored anchors (and background anchors)
  that the engine puts on the other side of ``score_threshold``, leaving out those within the
  tier's ``score_abs`` of it; the worst item and anchor named.

Every check names its worst item by its source (file name or ``.npz`` key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from batchforge.errors import ConfigError
from batchforge.parity.report import Check, source_name
from batchforge.runtime.post.tensors import OutputOptions
from batchforge.tolerances import Limit


def map_checks(name: str, ref: np.ndarray, eng: np.ndarray, options: OutputOptions,
               limits: Mapping[str, Limit], sources: Sequence[str]) -> list[Check]:
    """The probability_map checks of the module docstring."""
    r = ref.reshape(len(ref), -1).astype(np.float64)
    e = eng.reshape(len(eng), -1).astype(np.float64)
    floor, threshold = options.floor, options.threshold
    above = r > floor
    cosines = []
    for i in range(len(r)):
        a, b = r[i][above[i]], e[i][above[i]]
        if a.size:
            denom = np.linalg.norm(a) * np.linalg.norm(b)
            cosines.append((float(a @ b / denom) if denom > 0 else 0.0, i))
    empty = len(r) - len(cosines)
    where = f"elements above the floor {floor:g}"
    checks = []
    if cosines:
        worst_cos, at = min(cosines)
        checks.append(Check(f"map_cosine_min[{name}]", worst_cos, limits["map_cosine"],
                            f"worst {source_name(sources[at])} over its {int(above[at].sum())} {where}; "
                            f"{len(cosines)} items judged, {empty} with no element above the floor"))
    errors = np.where(above, np.abs(r - e), 0.0)
    at = int(np.argmax(errors.max(axis=1)))
    checks.append(Check(f"map_max_abs[{name}]", float(errors.max()), limits["map_max_abs"],
                        f"worst {source_name(sources[at])}; over {int(above.sum())} {where} in {len(r)} items"))
    band = limits["map_max_abs"].value
    judged = np.abs(r - threshold) > band
    ref_on, eng_on = (r >= threshold) & judged, (e >= threshold) & judged
    inter, union = (ref_on & eng_on).sum(axis=1), (ref_on | eng_on).sum(axis=1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    at = int(np.argmin(iou))
    checks.append(Check(f"map_iou_min[{name}]", float(iou[at]), limits["map_iou"],
                        f"worst {source_name(sources[at])} (reference {int(ref_on[at].sum())} elements on, engine "
                        f"{int(eng_on[at].sum())}, {int(inter[at])} both) binarised at {threshold:g}; elements "
                        f"within {band:g} of it left out; mean {iou.mean():.6f}"))
    return checks


def split_channels(name: str, array: np.ndarray, options: OutputOptions) -> tuple[np.ndarray, np.ndarray]:
    """(box channels, score channels) of a boxes_scores output along its last axis."""
    assert options.box_channels is not None and options.score_channels is not None  # OutputOptions checks
    channels = array.shape[-1] if array.ndim > 1 else 0
    stop = max(options.box_channels[1], options.score_channels[1])
    if stop > channels:
        raise ConfigError(f"output {name!r}: box_channels {list(options.box_channels)} and score_channels "
                          f"{list(options.score_channels)} need {stop} channels on the last axis, the output "
                          f"has {channels} (shape {array.shape[1:]} per item)",
                          hint=f"fix postprocess.outputs.{name} in the spec")
    return (array[..., slice(*options.box_channels)].astype(np.float64),
            array[..., slice(*options.score_channels)].astype(np.float64))


def boxes_scores_checks(name: str, ref: np.ndarray, eng: np.ndarray, options: OutputOptions,
                        limits: Mapping[str, Limit], sources: Sequence[str]) -> list[Check]:
    """The boxes_scores checks of the module docstring."""
    ref_boxes, ref_scores = split_channels(name, ref, options)
    eng_boxes, eng_scores = split_channels(name, eng, options)
    threshold = options.score_threshold
    items = len(ref)
    scored = ref_scores.max(axis=-1) >= threshold  # (N, anchors...): anchors whose boxes are used
    box_error = np.where(scored[..., None], np.abs(ref_boxes - eng_boxes), 0.0).reshape(items, -1)
    at = int(np.argmax(box_error.max(axis=1)))
    boxes = (f"worst {source_name(sources[at])}; over {int(scored.sum())} anchors scored >= {threshold:g} by the "
             f"reference in {items} items (background anchors' boxes are not used)")
    checks = [Check(f"box_px[{name}]", float(box_error.max()), limits["box_px"], boxes)]
    score_error = np.abs(ref_scores - eng_scores).reshape(items, -1)
    at = int(np.argmax(score_error.max(axis=1)))
    checks.append(Check(f"score_abs[{name}]", float(score_error.max()), limits["score_abs"],
                        f"worst {source_name(sources[at])}; over every anchor"))
    band = limits["score_abs"].value
    r, e = ref_scores.reshape(items, -1), eng_scores.reshape(items, -1)
    dropped = (r >= threshold + band) & (e < threshold)
    raised = (r < threshold - band) & (e >= threshold)
    positives = int(np.sum(r >= threshold))
    flips = dropped | raised
    detail = (f"{int(dropped.sum())} of {positives} scored values dropped under {threshold:g}, {int(raised.sum())} "
              f"raised over it (values within {band:g} of it left out)")
    if flips.any():
        item, flat = np.argwhere(flips)[np.argmax(np.abs(r - e)[flips])]
        anchor, channel = divmod(int(flat), ref_scores.shape[-1])
        detail += (f"; worst {source_name(sources[item])} anchor {anchor} score channel {channel}: "
                   f"reference {r[item, flat]:.4g}, engine {e[item, flat]:.4g}")
    checks.append(Check(f"score_threshold_flips[{name}]", float(flips.sum()) / max(positives, 1),
                        limits["score_flips"], detail))
    return checks
