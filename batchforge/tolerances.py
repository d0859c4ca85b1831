"""The parity tolerance table: one entry per family and precision, each with its reason.

A change to a value needs a measured reason written beside it (SPEC §6). Values marked
"SPEC starting tier" are the design's starting points; the others were tuned on measurements
recorded in their reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from batchforge.errors import ConfigError
from batchforge.runtime.artifacts import Precision

if TYPE_CHECKING:
    from batchforge.runtime.post.tensors import OutputOptions

FP32, FP16, INT8 = Precision.FP32, Precision.FP16, Precision.INT8


@dataclass(frozen=True)
class Limit:
    """A bound on one metric: ``value`` is a minimum or a maximum."""

    value: float
    kind: Literal["min", "max"]
    reason: str

    def passes(self, measured: float) -> bool:
        return measured >= self.value if self.kind == "min" else measured <= self.value

    @property
    def symbol(self) -> str:
        return ">=" if self.kind == "min" else "<="


def at_least(value: float, reason: str) -> Limit:
    return Limit(value, "min", reason)


def at_most(value: float, reason: str) -> Limit:
    return Limit(value, "max", reason)


SPEC = "SPEC starting tier"
_START = "starting value, not yet measured on a trained model"
# tensors: the limits of the output kinds a spec declares (runtime/post/tensors.py OutputKind).
# probability_map: values are probabilities, so errors are absolute (the raw max_rel tier at the
# map's 0-1 scale), on the elements above the floor only; the IoU of the maps binarised at the
# threshold leaves out elements whose reference is within map_max_abs of it (they may flip).
# boxes_scores: box channels in pixels, judged on anchors the reference scores at or above the
# threshold (a background anchor's box is never used); scores as the detector family's.
_TENSORS_KINDS: dict[Precision, dict[str, Limit]] = {
    FP32: {
        "map_cosine": at_least(0.99999, SPEC + " (raw cosine), per item over elements above the floor"),
        "map_max_abs": at_most(1e-4, "the raw max_rel tier at the map's 0-1 scale"),
        "map_iou": at_least(0.99, _START + ": ambiguous elements (within map_max_abs of the threshold) "
                                  "are left out, so fp32 should give 1.0"),
        "box_px": at_most(0.1, "SPEC raw tier 1e-4 rel of a ~1000 px extent"),
        "score_abs": at_most(5e-4, "as the detector family's fp32 score_abs (measured 1.3e-4)"),
        "score_flips": at_most(0.0, "the detector family's recall 1.0: no scored anchor crosses the threshold"),
    },
    FP16: {
        "map_cosine": at_least(0.9995, SPEC + " (raw cosine), per item over elements above the floor"),
        "map_max_abs": at_most(2e-2, "the raw max_rel tier at the map's 0-1 scale"),
        "map_iou": at_least(0.98, _START),
        "box_px": at_most(1.0, "SPEC 1e-3 rel of a ~1000 px extent (as batch_boxes_max_abs)"),
        "score_abs": at_most(0.03, "as the detector family's fp16 score_abs (measured 0.0143)"),
        "score_flips": at_most(0.01, "the detector family's recall tier 0.99"),
    },
    INT8: {
        "map_cosine": at_least(0.98, SPEC + " (raw cosine), per item over elements above the floor"),
        "map_max_abs": at_most(0.25, "the raw max_rel tier at the map's 0-1 scale"),
        "map_iou": at_least(0.9, _START),
        "box_px": at_most(10.0, "SPEC 1e-2 rel of a ~1000 px extent (as batch_boxes_max_abs)"),
        "score_abs": at_most(0.05, "as the detector family's int8 score_abs (SPEC)"),
        "score_flips": at_most(0.1, "the detector family's recall tier 0.9"),
    },
}
# tensors: does the FP32 reference respond to its input at all? Agreement of an engine with a
# reference that gives every item the same output proves nothing (issue #27: an untrained
# shufflenet_v2 gave logits spread 1e-6 over 16 photographs). Failing one of these marks the run
# UNINFORMATIVE (exit 0; 1 with ``parity --strict``), not FAILED: the engine may be right.
TENSORS_SANITY: dict[str, Limit] = {
    "item_spread": at_least(1e-3, "10 x the fp32 raw_max_rel tier: items must differ by more than "
                                  "the error the fp32 gate accepts, or agreement cannot tell them apart"),
    "identical_pairs": at_most(0.5, "share of item pairs within 1e-4 (fp32 raw_max_rel) of each other; "
                                    "a constant model gives 1.0, a few repeated inputs far less"),
    "map_spread": at_least(1e-3, "within an item, a map or vector must vary by more than 10 x the fp32 "
                                 "raw_max_rel tier somewhere in the set"),
    "classes": at_least(2.0, "one argmax class for every item: class agreement cannot fail"),
}
# keypoints: joints whose reference peak has another cell within 2 x the tier's raw tolerance are
# compared by value, not by pixel (parity/keypoints.py); when more than a tenth are, the heatmaps
# are too flat for the tier and the pixel check no longer decides enough joints to mean anything
_AMBIGUOUS = Limit(0.1, "max", "measured fp32: 0.033 of 544 joints (0.029 of 102); heatmaps with more "
                               "near-tied peaks than this are too flat to gate by pixel at this tier")
# why dense detection outputs sit further from the reference than pooled ones (fp32)
_RESIZE_GAP = ("the runtime's OpenCV letterbox resize and the reference's torch resize differ by up to "
               "7e-5 (normalised input units), which dense per-anchor outputs do not average out; ORT "
               "on the reference's own input is within 1.2e-5")

# shared by the two box families (detector, facepose): the box/score/recall checks
_BOXES: dict[Precision, dict[str, Limit]] = {
    FP32: {
        "raw_cosine": at_least(0.99999, SPEC),
        "matched_iou": at_least(0.999, SPEC),
        "score_abs": at_most(5e-4, "SPEC 1e-4 raised: measured 1.3e-4 (detector), 5.1e-5 (facepose); "
                                   + _RESIZE_GAP),
        "anchor_agreement": at_least(0.99, "measured 1.0 (760 pairs); two neighbouring anchors of one "
                                             "object can tie within the fp32 score noise"),
        "recall": at_least(1.0, SPEC),
        "batch_boxes_max_abs": at_most(1e-5, "SPEC batch tier (original pixels)"),
        "batch_scores_max_abs": at_most(1e-6, "SPEC batch tier"),
        "batch_classes_max_abs": at_most(0.0, "class ids are integers: equal or wrong"),
        "batch_max_abs": at_most(1e-5, "SPEC batch tier for fp32"),
    },
    FP16: {
        "raw_cosine": at_least(0.9995, SPEC),
        "matched_iou": at_least(0.9, "SPEC 0.98 lowered: measured 0.984 (detector), 0.955 (facepose) on "
                                      "same-anchor pairs: fp16 distances through exp() move the edges "
                                      "of a small box by about a pixel"),
        "score_abs": at_most(0.03, "SPEC 0.01 raised: measured 0.0143 (detector), 0.0116 (facepose) = "
                                   "the raw score error itself (raw max_rel 1.4e-2), fp16 rounding "
                                   "over ~60 layers"),
        "anchor_agreement": at_least(0.9, "neighbouring anchors tie within the fp16 score noise (1e-2); "
                                            "measured 0.992 (detector), 1.0 (facepose)"),
        "recall": at_least(0.99, SPEC),
        "precision": at_least(0.99, "the mirror of recall"),
        "batch_boxes_max_abs": at_most(1.0, "SPEC 1e-3 rel of the ~1000 px extent of the eval images"),
        "batch_scores_max_abs": at_most(1e-3, "SPEC 1e-3 rel of scores in [0, 1]"),
        "batch_classes_max_abs": at_most(0.0, "class ids are integers: equal or wrong"),
        "batch_max_abs": at_most(1e-3, "SPEC batch tier for fp16 (1e-3 rel)"),
    },
    INT8: {
        "raw_cosine": at_least(0.98, SPEC),
        "raw_max_rel": at_most(0.25, "per-tensor int8 activations (as reid). Measured with PTQ "
                                     "(percentile, 32 images, 16 convs FP32): max_rel 0.51 (detector "
                                     "scores), 0.53 (facepose boxes) at raw cosine 0.990 / 0.987 -- "
                                     "int8 fails here (KNOWN_FAILURES), not loosened"),
        "matched_iou": at_least(0.9, SPEC),
        "score_abs": at_most(0.05, SPEC),
        "anchor_agreement": at_least(0.7, "starting tier: int8 score noise (5e-2) reorders near-tied "
                                            "neighbours"),
        "recall": at_least(0.9, SPEC),
        "precision": at_least(0.9, "the mirror of recall"),
        "batch_boxes_max_abs": at_most(10.0, "SPEC 1e-2 rel of the ~1000 px extent of the eval images"),
        "batch_scores_max_abs": at_most(1e-2, "SPEC 1e-2 rel of scores in [0, 1]"),
        "batch_classes_max_abs": at_most(0.0, "class ids are integers: equal or wrong"),
        "batch_max_abs": at_most(1e-2, "SPEC batch tier for int8 (1e-2 rel)"),
    },
}

TOLERANCES: dict[str, dict[Precision, dict[str, Limit]]] = {
    "reid": {
        FP32: {
            "raw_cosine": at_least(0.99999, SPEC),
            "raw_max_rel": at_most(1e-4, "ORT CPU vs torch CPU FP32 measured <= 1e-6 on the reid zoo"),
            "embedding_cosine": at_least(0.99999, SPEC),
            "top1_agreement": at_least(1.0, SPEC),
            "top5_overlap": at_least(0.99, "ranks 2-5 of unrelated gallery items can tie within "
                                           "1e-6; top-1 agreement carries the strict check"),
            "score_tie": at_most(1e-6, "reference cosines closer than 8 float32 ulps at 1.0 have no order"),
            "batch_max_abs": at_most(1e-5, "unit-norm embeddings; SPEC batch tier for fp32"),
        },
        FP16: {
            "raw_cosine": at_least(0.9995, SPEC),
            "raw_max_rel": at_most(2e-2, "fp16 has an 11-bit mantissa (4.9e-4 per rounding) "
                                         "accumulated over ~50 layers"),
            "embedding_cosine": at_least(0.9995, SPEC),
            "top1_agreement": at_least(0.99, SPEC),
            "top5_overlap": at_least(0.95, "near-tied ranks 2-5 may swap at fp16 resolution"),
            "score_tie": at_most(1e-3, "fp16 rounds each embedding value by up to 4.9e-4 relative, so two "
                                       "cosines within 1e-3 can swap; measured: effnet query 33, gap 1.6e-4, "
                                       "swapped at embedding cosine 0.99998"),
            "batch_max_abs": at_most(1e-3, "SPEC batch tier for fp16 (1e-3 rel)"),
        },
        INT8: {
            "raw_cosine": at_least(0.98, SPEC),
            "raw_max_rel": at_most(0.25, "per-tensor int8 activations: 1/255 of the range per "
                                         "rounding, accumulated"),
            "embedding_cosine": at_least(0.98, SPEC),
            "top1_agreement": at_least(0.95, SPEC),
            "top5_overlap": at_least(0.85, "near-tied ranks 2-5 swap at int8 resolution"),
            "score_tie": at_most(1e-2, "int8 rounds activations by 1/255 of their range (3.9e-3), so two "
                                       "cosines within 1e-2 can swap"),
            "batch_max_abs": at_most(1e-2, "SPEC batch tier for int8 (1e-2 rel)"),
        },
    },
    "anomaly": {
        # map units: 1.0 = the 99.9th percentile of good pixels; the 32-image evaluation set's good
        # images score <= 1.08 and its defective ones >= 1.32 (see export/zoo/anomaly.py)
        FP32: {
            "raw_cosine": at_least(0.99999, SPEC),
            "raw_max_rel": at_most(1e-4, "ORT CPU vs torch CPU FP32 measured 2.8e-7 (map), 1.9e-7 (score)"),
            "score_error": at_most(1e-4, "measured 3.5e-7 on 32 images (|error| / max(|ref|, 1))"),
            "map_error": at_most(1e-4, "measured 6.6e-7 (32 images), 4.8e-7 tiled (2 images, 6 tiles)"),
            "region_iou_min": at_least(0.99, SPEC),
            "decision_agreement": at_least(1.0, "scores agree to 1e-6; no image that close to the threshold"),
            "reference_image_auroc": at_least(0.9, "issue 4: the fitted zoo model must separate the "
                                                   "generated defects; measured 1.0 on 32 images"),
            "batch_max_abs": at_most(1e-5, "SPEC batch tier for fp32; measured 7.2e-7 (map)"),
        },
        FP16: {
            "raw_cosine": at_least(0.9995, SPEC),
            "raw_max_rel": at_most(2e-2, "fp16 has an 11-bit mantissa (4.9e-4 per rounding) accumulated "
                                         "over ~12 layers and a 100-d Mahalanobis sum"),
            "score_error": at_most(5e-3, "measured 4.7e-4 (32 images, ORT CPU); 1/50 of the gap "
                                         "between good and defective scores"),
            "map_error": at_most(5e-3, "measured 6.6e-4, 5.5e-4 tiled"),
            "region_iou_min": at_least(0.95, SPEC),
            "decision_agreement": at_least(0.95, "an image within fp16 error of the threshold may flip"),
            "reference_image_auroc": at_least(0.9, "the reference is FP32 at every precision"),
            "batch_max_abs": at_most(1e-3, "SPEC batch tier for fp16 (1e-3 rel)"),
        },
        INT8: {
            "raw_cosine": at_least(0.98, SPEC),
            "raw_max_rel": at_most(0.25, "per-tensor int8 activations: 1/255 of the range per rounding, "
                                         "accumulated"),
            "score_error": at_most(0.15, "measured 0.093 (32 images; Q/DQ calibrated on 32 samples, "
                                         "seed 4000): per-tensor int8 features, amplified by the whitening"),
            "map_error": at_most(0.2, "measured 0.12, 0.06 tiled (same calibration)"),
            "region_iou_min": at_least(0.8, SPEC + "; measured 0.937 (mean 0.975)"),
            "decision_agreement": at_least(0.9, "images near the threshold may flip at int8 resolution"),
            "reference_image_auroc": at_least(0.9, "the reference is FP32 at every precision"),
            "batch_max_abs": at_most(1e-2, "SPEC batch tier for int8 (1e-2 rel)"),
        },
    },
    "detector": {
        FP32: {
            **_BOXES[FP32],
            "raw_max_rel": at_most(5e-4, "measured 1.4e-4 (scores) on the 16-image eval set: " + _RESIZE_GAP),
            "class_agreement": at_least(1.0, "same anchor, same logits to ~1e-6: a class cannot flip"),
            "precision": at_least(1.0, "the mirror of recall: no extra detection clear of the thresholds"),
        },
        FP16: {
            **_BOXES[FP16],
            "raw_max_rel": at_most(2e-2, "measured 1.4e-2 (scores): fp16 11-bit mantissa over ~60 layers"),
            "class_agreement": at_least(0.99, "SPEC recall tier applied to classes"),
        },
        INT8: {
            **_BOXES[INT8],
            "class_agreement": at_least(0.9, "SPEC recall tier applied to classes"),
        },
    },
    "facepose": {
        FP32: {
            **_BOXES[FP32],
            "raw_max_rel": at_most(5e-4, "measured 8.6e-5 (scores) on the 16-image eval set: " + _RESIZE_GAP),
            "class_agreement": at_least(1.0, "one class"),
            "precision": at_least(1.0, "the mirror of recall"),
            "pose_abs": at_most(2e-3, "radians / metres; measured <= 4.2e-4 (tz of a ~5 m face): "
                                      + _RESIZE_GAP),
            "landmark_px": at_most(0.05, "SPEC keypoint tier 0.01 raised: measured <= 0.0136 px: "
                                         + _RESIZE_GAP),
            "batch_pose_max_abs": at_most(1e-5, "SPEC batch tier"),
            "batch_landmarks_max_abs": at_most(1e-4, "SPEC batch tier (keypoints)"),
        },
        FP16: {
            **_BOXES[FP16],
            "raw_max_rel": at_most(2e-2, "measured 1.2e-2 (scores): fp16 11-bit mantissa over ~40 layers"),
            "class_agreement": at_least(1.0, "one class"),
            "pose_abs": at_most(0.1, "measured 0.035 m: raw pose error 1.3e-2 on log width -> 1.3% of "
                                     "tz (~2.7 m)"),
            "landmark_px": at_most(8.0, "SPEC keypoint tier 0.5 raised: measured 3.2 px, the 1.3% depth "
                                        "error above scaling a ~250 px face about its centre"),
            "batch_pose_max_abs": at_most(5e-3, "SPEC 1e-3 rel of tz up to ~5 m"),
            "batch_landmarks_max_abs": at_most(1.0, "SPEC 1e-3 rel of the ~1000 px image extent"),
        },
        INT8: {
            **_BOXES[INT8],
            "class_agreement": at_least(1.0, "one class"),
            "pose_abs": at_most(0.1, "int8 pose codes (~1e-2 rel) through exp(log width): ~1e-2 rel of tz"),
            "landmark_px": at_most(2.0, "SPEC keypoint tier"),
            "batch_pose_max_abs": at_most(5e-2, "SPEC 1e-2 rel of tz up to ~5 m"),
            "batch_landmarks_max_abs": at_most(10.0, "SPEC 1e-2 rel of the ~1000 px image extent"),
        },
    },
    # keypoints: pixel errors in original-image pixels (eval images 220-320 px, so ~1 image px per
    # input px); heatmap maxima (scores) span ~0.7-3.4 on the seeded init.
    "keypoints": {
        FP32: {
            "raw_cosine": at_least(0.99999, SPEC),
            "raw_max_rel": at_most(2e-4, "ORT CPU vs torch CPU measured 5.3e-5 on the 32 eval animals; "
                                         "torch fp32 vs fp64 alone is 7e-6..5e-5 (MobileNetV2 "
                                         "depthwise stacks)"),
            "keypoint_px_error_max": at_most(0.01, SPEC + "; measured 0.0037 (DARK on a flat peak, "
                                                   "median 1e-4)"),
            "score_abs_error_max": at_most(5e-4, "measured 1.2e-4: scores are raw heatmap maxima up to "
                                                 "~4.4, so the raw 5.3e-5 relative error shows"),
            "keypoint_names_match": at_least(1.0, "names are data: equal or a config fault"),
            "keypoint_ambiguous_fraction": _AMBIGUOUS,
            "batch_keypoints_max_abs": at_most(1e-4, SPEC),
            "batch_scores_max_abs": at_most(1e-5, "SPEC fp32 score tier; measured exactly equal on ORT CPU"),
            "batch_max_abs": at_most(1e-4, SPEC),
        },
        FP16: {
            "raw_cosine": at_least(0.9995, SPEC),
            "raw_max_rel": at_most(2e-2, "fp16 11-bit mantissa accumulated over ~60 layers, as reid"),
            "keypoint_px_error_max": at_most(0.5, SPEC + ". Measured with the seeded init: 139 px (median "
                                                  "0.1): raw max_rel 1.0e-2 flips the argmax between "
                                                  "near-tied broad peaks -- fails, not loosened"),
            "score_abs_error_max": at_most(1e-2, "SPEC score tier for fp16 (detection); measured 0.035 "
                                                 "(raw 1% of peaks up to 4.4) -- fails, not loosened"),
            "keypoint_names_match": at_least(1.0, "names are data: equal or a config fault"),
            "keypoint_ambiguous_fraction": _AMBIGUOUS,
            "batch_keypoints_max_abs": at_most(0.25, "SPEC 1e-3 rel of the 256 px input"),
            "batch_scores_max_abs": at_most(4e-3, "SPEC 1e-3 rel of scores up to ~4"),
            "batch_max_abs": at_most(0.25, "SPEC 1e-3 rel of the 256 px input"),
        },
        INT8: {
            "raw_cosine": at_least(0.98, SPEC),
            "raw_max_rel": at_most(0.25, "per-tensor int8 activations, as reid"),
            "keypoint_px_error_max": at_most(2.0, SPEC + ". Measured with synthetic PTQ: raw cosine 0.77, "
                                                  "277 px -- fails, not loosened"),
            "score_abs_error_max": at_most(5e-2, "SPEC score tier for int8 (detection)"),
            "keypoint_names_match": at_least(1.0, "names are data: equal or a config fault"),
            "keypoint_ambiguous_fraction": _AMBIGUOUS,
            "batch_keypoints_max_abs": at_most(2.56, "SPEC 1e-2 rel of the 256 px input"),
            "batch_scores_max_abs": at_most(4e-2, "SPEC 1e-2 rel of scores up to ~4"),
            "batch_max_abs": at_most(2.56, "SPEC 1e-2 rel of the 256 px input"),
        },
    },
    # mtcnn: trained networks (facenet-pytorch's weights) on real photographs. Stage rows judge
    # each network's raw outputs against PyTorch (offsets and landmarks are fractions of a box,
    # |.| <= 0.9; face logits |.| <= 12.9 on the evaluation inputs); detector rows ("face_*",
    # "matched_iou_min", "detect_*", "landmark_px_max") judge the runtime's three-stage pipeline
    # against facenet-pytorch's own MTCNN.detect() in original pixels (parity/mtcnn.py).
    "mtcnn": {
        FP32: {
            "raw_cosine": at_least(0.99999, SPEC),
            "raw_max_rel": at_most(1e-4, "ORT CPU vs torch CPU measured 1.8e-6 (the export check's tier)"),
            "face_prob_abs_max": at_most(1e-4, SPEC + " (detection score); measured 2.0e-6"),
            "threshold_agreement": at_least(1.0, "measured 1.0: every probability on the same side of its "
                                                 "stage's threshold"),
            "landmark_crop_px_max": at_most(0.01, SPEC + " (keypoints px); measured 2.9e-5"),
            "batch_face_logit_max_abs": at_most(1e-5, SPEC + "; measured exactly equal"),
            "batch_max_abs": at_most(1e-5, SPEC),
            "face_recall": at_least(1.0, SPEC + "; measured 19 of 19 reference faces"),
            "face_precision": at_least(1.0, "the mirror of recall; measured 19 of 19"),
            "matched_iou_min": at_least(0.999, SPEC + "; measured 0.999999 (the same area resampling "
                                                "as facenet-pytorch: runtime/post/mtcnn.py)"),
            "detect_prob_abs_max": at_most(1e-4, SPEC + "; measured 6.0e-8"),
            "landmark_px_max": at_most(0.01, SPEC + " (keypoints px); measured 4.3e-5"),
            "detect_batch_boxes_max_abs": at_most(1e-5, SPEC + "; measured exactly equal"),
            "detect_batch_probs_max_abs": at_most(1e-6, SPEC + "; measured exactly equal"),
            "detect_batch_landmarks_max_abs": at_most(1e-4, SPEC + "; measured exactly equal"),
        },
        FP16: {
            "raw_cosine": at_least(0.9995, SPEC),
            "raw_max_rel": at_most(2e-2, "fp16 rounding over 5-8 layers; measured 3.2e-3 (P-Net logit)"),
            "face_prob_abs_max": at_most(0.01, SPEC + " (detection score); measured 3.6e-3"),
            "threshold_agreement": at_least(0.99, "SPEC fp16 recall tier; measured 1.0"),
            "landmark_crop_px_max": at_most(0.5, SPEC + " (keypoints px); measured 0.029"),
            "batch_face_logit_max_abs": at_most(0.013, "SPEC 1e-3 rel of logits up to 12.9; measured "
                                                       "3.9e-3 = one fp16 step at |logit| 4..8"),
            "batch_max_abs": at_most(1e-3, SPEC + " (offsets and landmarks are fractions <= 0.9)"),
            "face_recall": at_least(0.99, SPEC),
            "face_precision": at_least(0.99, "the mirror of recall"),
            "matched_iou_min": at_least(0.98, SPEC + "; measured 0.9991 with 8 of 566 crop windows on tied "
                                                "pixels (0.971 before ties were counted: parity/mtcnn.py)"),
            "detect_prob_abs_max": at_most(0.01, SPEC + "; measured 2.0e-5"),
            "landmark_px_max": at_most(0.5, SPEC + " (keypoints px); measured 0.041 (0.87 before ties)"),
            "detect_batch_boxes_max_abs": at_most(0.5, "SPEC 1e-3 rel of 512 px photographs; measured "
                                                       "exactly equal"),
            "detect_batch_probs_max_abs": at_most(1e-3, SPEC),
            "detect_batch_landmarks_max_abs": at_most(0.5, "SPEC 1e-3 rel of 512 px photographs"),
        },
        INT8: {
            "raw_cosine": at_least(0.98, SPEC),
            "raw_max_rel": at_most(0.25, "per-tensor int8 activations, as reid; measured 0.16 (P-Net offsets)"),
            "face_prob_abs_max": at_most(0.05, SPEC + " (detection score). Measured 0.28 (P-Net all int8), "
                                                "so calibration stops on it (calibration/criterion.py); 0.020 (O-Net)"),
            "threshold_agreement": at_least(0.95, "SPEC int8 recall tier; measured 0.9994 (P-Net)"),
            "landmark_crop_px_max": at_most(2.0, SPEC + " (keypoints px); measured 1.5"),
            "batch_face_logit_max_abs": at_most(0.13, "SPEC 1e-2 rel of logits up to 12.9; measured 0.063"),
            "batch_max_abs": at_most(1e-2, SPEC + " (offsets and landmarks are fractions <= 0.9)"),
            "face_recall": at_least(0.9, SPEC),
            "face_precision": at_least(0.9, "the mirror of recall"),
            "matched_iou_min": at_least(0.9, SPEC + "; measured 0.919 with 321 of 565 crop windows on tied "
                                               "pixels and 4 of 19 faces among tied candidates of the last NMS"),
            "detect_prob_abs_max": at_most(0.05, SPEC + "; measured 0.017"),
            "landmark_px_max": at_most(2.0, SPEC + " (keypoints px); measured 1.44 with P-Net calibrated on its "
                                               "pyramid levels (2.06 on one 240 px level per image)"),
            "detect_batch_boxes_max_abs": at_most(5.0, "SPEC 1e-2 rel of 512 px photographs"),
            "detect_batch_probs_max_abs": at_most(1e-2, SPEC),
            "detect_batch_landmarks_max_abs": at_most(5.0, "SPEC 1e-2 rel of 512 px photographs"),
        },
    },
    # ptycho: the stitched object (complex, |.| <= 1) against the reference path; amplitude in
    # 0..1 and phase in radians (|phase| < pi) per patch for batch equivalence.
    "ptycho": {
        FP32: {
            "raw_cosine": at_least(0.99999, SPEC),
            "raw_max_rel": at_most(1e-4, "ORT CPU vs torch CPU measured 3.6e-6 (144 patterns)"),
            "stitched_rel_error": at_most(1e-5, "measured 5.8e-7; averaging only shrinks patch errors"),
            "stitched_psnr_db": at_least(100.0, "measured 128 dB; 100 dB is the 1e-5 relative tier at "
                                                "|object| ~0.7 of the peak"),
            "batch_amplitude_max_abs": at_most(1e-5, "SPEC fp32 batch tier; measured exactly equal"),
            "batch_phase_max_abs": at_most(1e-5, "SPEC fp32 batch tier; measured exactly equal"),
            "batch_max_abs": at_most(1e-5, "SPEC fp32 batch tier"),
        },
        FP16: {
            "raw_cosine": at_least(0.9995, SPEC),
            "raw_max_rel": at_most(2e-2, "fp16 11-bit mantissa accumulated over ~20 layers"),
            "stitched_rel_error": at_most(5e-3, "starting tier ~10x fp16 rounding (4.9e-4); measured 6.8e-4"),
            "stitched_psnr_db": at_least(45.0, "starting tier, the 5e-3 rel error at |o| ~1; measured 66.7"),
            "batch_amplitude_max_abs": at_most(1e-3, "SPEC batch tier for fp16 (1e-3 rel of 0..1)"),
            "batch_phase_max_abs": at_most(3e-3, "SPEC 1e-3 rel of the +-pi phase range"),
            "batch_max_abs": at_most(1e-3, "SPEC batch tier for fp16 (1e-3 rel)"),
        },
        INT8: {
            "raw_cosine": at_least(0.98, SPEC),
            "raw_max_rel": at_most(0.25, "per-tensor int8 activations, as reid"),
            "stitched_rel_error": at_most(5e-2, "starting tier (int8 steps of 1/255 of each range); "
                                                "measured 1.5e-2 with synthetic PTQ"),
            "stitched_psnr_db": at_least(25.0, "starting tier, the 5e-2 rel error at |o| ~1; measured 39.9"),
            "batch_amplitude_max_abs": at_most(1e-2, "SPEC batch tier for int8 (1e-2 rel of 0..1)"),
            "batch_phase_max_abs": at_most(3e-2, "SPEC 1e-2 rel of the +-pi phase range"),
            "batch_max_abs": at_most(1e-2, "SPEC batch tier for int8 (1e-2 rel)"),
        },
    },
    # tensors: any user model's raw outputs, judged output by output (parity/tensors.py). The
    # tiers are reid's/anomaly's raw tiers (the SPEC starting tiers for raw outputs): these are
    # the same networks minus a decoder. Scales are unknown, so every bound is relative: max_rel
    # and score ties in units of the output's (row's) largest |reference| value, batch
    # equivalence on each output divided by its largest |value|. A spec's
    # ``postprocess.outputs.<name>.tolerances.<precision>`` replaces a value for one output.
    "tensors": {
        FP32: {
            "raw_cosine": at_least(0.99999, SPEC),
            "raw_max_rel": at_most(1e-4, "as reid: ORT CPU vs torch CPU FP32 measured <= 1e-6 on the reid "
                                         "zoo, <= 3.1e-7 on the test classifiers of tests/user_models.py, 4.6e-7 "
                                         "on torchvision squeezenet1_1 (weights=None, 64x64)"),
            "row_cosine": at_least(0.99999, SPEC + " (embedding cosine), per item"),
            "argmax_agreement": at_least(1.0, "SPEC top-1 tier; reference ties within score_tie count as agreement"),
            "topk_overlap": at_least(0.99, "as reid top5_overlap: near-tied lower ranks"),
            "score_tie": at_most(1e-6, "as reid: scores closer than ~8 float32 ulps of the row's "
                                       "largest value have no order"),
            "batch_max_abs": at_most(1e-5, "SPEC fp32 batch tier, relative to the output's largest |value|"),
            **_TENSORS_KINDS[FP32],
        },
        FP16: {
            "raw_cosine": at_least(0.9995, SPEC),
            "raw_max_rel": at_most(2e-2, "as reid: fp16 has an 11-bit mantissa (4.9e-4 per rounding) "
                                         "accumulated over the layers"),
            "row_cosine": at_least(0.9995, SPEC + " (embedding cosine), per item"),
            "argmax_agreement": at_least(0.99, SPEC + " (retrieval top-1)"),
            "topk_overlap": at_least(0.95, "as reid: near-tied lower ranks swap at fp16 resolution"),
            "score_tie": at_most(1e-3, "as reid: fp16 rounds each value by up to 4.9e-4 relative, so "
                                       "scores within 1e-3 of the row's scale can swap"),
            "batch_max_abs": at_most(1e-3, "SPEC batch tier for fp16 (1e-3 rel)"),
            **_TENSORS_KINDS[FP16],
        },
        INT8: {
            "raw_cosine": at_least(0.98, SPEC),
            "raw_max_rel": at_most(0.25, "as reid: per-tensor int8 activations, 1/255 of the range per "
                                         "rounding, accumulated"),
            "row_cosine": at_least(0.98, SPEC + " (embedding cosine), per item"),
            "argmax_agreement": at_least(0.95, SPEC + " (retrieval top-1)"),
            "topk_overlap": at_least(0.85, "as reid: near-tied lower ranks swap at int8 resolution"),
            "score_tie": at_most(1e-2, "as reid: int8 rounds activations by 1/255 of their range "
                                       "(3.9e-3), so scores within 1e-2 can swap"),
            "batch_max_abs": at_most(1e-2, "SPEC batch tier for int8 (1e-2 rel)"),
            **_TENSORS_KINDS[INT8],
        },
    },
}


def limits_for(family: str, precision: Precision) -> dict[str, Limit]:
    """The limits of one family and precision; unknown pairs raise ConfigError."""
    try:
        return TOLERANCES[family][Precision(precision)]
    except KeyError:
        raise ConfigError(
            f"no parity tolerances for family {family!r} at {Precision(precision).value}; "
            f"known families: {', '.join(sorted(TOLERANCES))}"
        ) from None


# Zoo model/precision runs that are measured to fail: with the zoo's seeded stand-in weights, and
# (mtcnn) with trained weights. The trained MTCNN networks pass every fp16 stage check with room
# (raw max_rel <= 4.2e-3) where the stand-ins' keypoints fail theirs on flat untrained heatmaps,
# which supports the stand-in reasons below for fp16; at int8 the trained P-Net fails its stage
# check too (per-tensor activations, no node kept by sensitivity), so an int8 failure is not by
# itself a sign of the stand-in init -- though the trained three-stage detector passes its int8
# tier. They still run and are reported in full; they count as failures
# unless ``--allow-known-failures`` (the main job and CI pass it, so these show as KNOWN in the
# summary instead of blocking the gate). A run listed here that passes says so, so the entry can
# be removed. The tiers are not loosened for them.
_MOBILENET = ("the seeded stand-in init of MobileNet blocks amplifies a relative perturbation by "
              "~1.45x per non-residual block (measured: 5e-4 weight noise -> 2.2e-2 backbone change)")
KNOWN_FAILURES: dict[tuple[str, Precision], str] = {
    ("detector", INT8): "recall passes, but matched IoU min 0.60 and score abs 0.71 with 16 convs kept "
                        "FP32 by the output-effect ranking (calibration-set output cosine min 0.974, "
                        "0.706 all-int8). " + _MOBILENET,
    ("facepose", INT8): "recall 0.875, matched IoU min 0.62, landmarks 71 px with 16 convs kept FP32 "
                        "(calibration-set output cosine min 0.982, 0.847 all-int8). " + _MOBILENET,
    ("keypoints", FP16): "the untrained heatmaps are too flat for fp16: 98% of joints have another "
                         "reference cell within 2 x 2e-2 of the peak (keypoint_ambiguous_fraction "
                         "0.983), so fp16 rounding (raw max_rel 1.0e-2, within tier) picks among tied "
                         "cells: 3.7 px worst (was 139 px before ties were counted), heatmap value at the "
                         "reference peak 0.021 (limit 0.02), score 0.035. " + _MOBILENET,
    ("keypoints", INT8): "raw heatmap cosine 0.949 with 16 convs kept FP32 (0.59 all-int8); every joint "
                         "ambiguous at the int8 tier and 142 px worst (engine peaks outside the tied "
                         "cells). " + _MOBILENET,
    ("reid_efficientnet_b3", INT8): "embedding cosine min 0.953 (raw max_rel 0.28) with 16 nodes kept "
                                    "FP32 (calibration-set output cosine min 0.965 / mean 0.984, 0.816 "
                                    "all-int8; measured with the RNG-independent BatchNorm init); "
                                    "top-1 agreement passes once int8 score ties (1e-2) are counted: "
                                    "depthwise + SiLU + squeeze-excite stacks of the untrained network",
}


def known_failure(model: str, precision: Precision) -> str | None:
    """Why this zoo model fails at this precision, if that is a measured, listed fact."""
    return KNOWN_FAILURES.get((model, precision))


# tensors: a spec's postprocess.outputs.<o>.tolerances.<precision> field -> (limit key, min/max)
TENSORS_OVERRIDES = {"max_abs": ("max_abs", "max"), "max_rel": ("raw_max_rel", "max"),
                     "min_cosine": ("row_cosine", "min"), "argmax_agreement": ("argmax_agreement", "min"),
                     "topk_overlap": ("topk_overlap", "min"), "min_iou": ("map_iou", "min"),
                     "box_px": ("box_px", "max"), "score_abs": ("score_abs", "max")}


def tensors_output_limits(limits: Mapping[str, Limit], options: OutputOptions, output: str,
                          precision: Precision) -> dict[str, Limit]:
    """The tier's limits with the spec's overrides for one output at one precision."""
    merged = dict(limits)
    override = getattr(options.tolerances, Precision(precision).value)
    if override is None:
        return merged
    for field, (key, kind) in TENSORS_OVERRIDES.items():
        value = getattr(override, field)
        if value is not None:
            merged[key] = Limit(value, kind, f"spec: postprocess.outputs.{output}.tolerances."  # type: ignore[arg-type]
                                             f"{Precision(precision).value}.{field}")
    return merged
