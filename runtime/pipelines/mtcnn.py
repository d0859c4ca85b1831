"""MTCNN pipelines: one stage on its own (``mtcnn_pnet``/``rnet``/``onet``), and ``mtcnn``, the
three-stage face detector over a batch of images.

The detector batches every network call across the images of a batch: P-Net once per pyramid
level and distinct level shape (images of one size share one call per level), R-Net and O-Net
once over the candidate crops of all images (chunked to the profile max). Every image's result
depends only on that image: NMS and thresholds run per image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchforge.errors import ConfigError, InputValidationError
from batchforge.runtime.batching import infer_in_chunks
from batchforge.runtime.guards import nonfinite_record
from batchforge.runtime.images import to_rgb_uint8
from batchforge.runtime.pipelines.base import Inferred, Pipeline, Prepared
from batchforge.runtime.post import mtcnn as post
from batchforge.runtime.results import Result
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import EnsembleSpec, ModelSpec, parse_options

STAGES = ("pnet", "rnet", "onet")


@dataclass(frozen=True)
class StageOptions:
    """Which MTCNN network a stage model is (its outputs are read by name)."""

    stage: str = "pnet"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"mtcnn stage must be one of {', '.join(STAGES)}, got {self.stage!r}")


@dataclass(frozen=True)
class StageResult(Result):
    """One stage's raw outputs for one input (offsets, landmarks, face logit) and its face
    probability."""

    outputs: Mapping[str, np.ndarray]

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), **{k: v.tolist() for k, v in self.outputs.items()},
                "face_prob": post.face_probability(self.outputs["face_logit"]).tolist()}


@dataclass(frozen=True)
class FacesResult(Result):
    """Faces found in one image, best first: xyxy boxes, face probabilities and 5 landmarks
    (left eye, right eye, nose, left and right mouth corner), all in original pixels."""

    image_size: tuple[int, int]  # (height, width)
    boxes: np.ndarray  # (K, 4) float32
    probs: np.ndarray  # (K,) float32
    landmarks: np.ndarray  # (K, 5, 2) float32

    def __len__(self) -> int:
        return len(self.probs)

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), "image_size": list(self.image_size),
                "faces": [{"box": b.tolist(), "prob": float(p), "landmarks": lm.tolist()}
                          for b, p, lm in zip(self.boxes, self.probs, self.landmarks)]}


class MtcnnStagePipeline(Pipeline):
    """One MTCNN network on its own (``run mtcnn_rnet``, calibration, per-stage parity): each
    image resized to the network's input, raw outputs per image."""

    family = "mtcnn"
    options_type = StageOptions

    def __init__(self, spec: ModelSpec, runner: Runner, options: StageOptions | None = None, **kwargs: Any) -> None:
        super().__init__(spec, runner, options, **kwargs)
        wanted = {"pnet": ("offsets", "face_logit"), "rnet": ("offsets", "face_logit"),
                  "onet": ("offsets", "landmarks", "face_logit")}[self.options.stage]
        if tuple(spec.outputs) != wanted:
            raise ConfigError(f"mtcnn {self.options.stage} model {spec.name!r} must have outputs "
                              f"{list(wanted)}, has {list(spec.outputs)}")

    def prepare(self, item: np.ndarray, source: str) -> Prepared:
        """The image area-resampled to the network's input (P-Net: its opt height and width, one
        pyramid level; an image of that size is taken as it is), scaled as the networks expect."""
        image = to_rgb_uint8(item, source=source, max_pixels=self.max_pixels)
        height, width = (int(d) for d in self.spec.input_shapes(self.spec.inputs[0])[1][2:4])
        if image.shape[:2] != (height, width):
            image = post.resize_area(image, height, width)
        return Prepared(source, {self.spec.inputs[0].name: post.to_network(image)})

    def calibration_feeds(self, item: np.ndarray, source: str) -> list[dict[str, np.ndarray]]:
        """P-Net: every pyramid level the detector runs it on (the detector's default
        ``min_face_size`` and ``factor``; levels within the profile's height and width), not the
        one opt-size level ``prepare`` makes; measured on the zoo's held-out photographs, the int8
        detector's landmark error 1.44 px instead of 2.06 (limit 2). R-Net and O-Net: their crop."""
        if self.options.stage != "pnet":
            return super().calibration_feeds(item, source)
        image = to_rgb_uint8(item, source=source, max_pixels=self.max_pixels)
        opts = post.MtcnnOptions()
        sides = [self.spec.dims.get(d) for d in ("height", "width")]
        low = max((s.min for s in sides if s), default=1)
        high = min((s.max for s in sides if s), default=max(image.shape[:2]))
        feeds = []
        for scale in post.pyramid_scales(*image.shape[:2], opts.min_face_size, opts.factor):
            height, width = post.level_size(*image.shape[:2], scale)
            if low <= min(height, width) and max(height, width) <= high:
                feeds.append({self.spec.inputs[0].name: post.to_network(post.resize_area(image, height, width))})
        return feeds or super().calibration_feeds(item, source)

    def postprocess(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Result]:
        return [StageResult(item.source, {k: outputs[k][i] for k in self.spec.outputs})
                for i, item in enumerate(items)]


class MtcnnPipeline(Pipeline):
    """The three-stage face detector (``mtcnn``): images -> faces with 5 landmarks."""

    family = "mtcnn"
    options_type = post.MtcnnOptions

    def __init__(self, ensemble: EnsembleSpec, members: Sequence[tuple[ModelSpec, Runner]],
                 options: post.MtcnnOptions | None = None, **kwargs: Any) -> None:
        if options is None:
            options = parse_options(post.MtcnnOptions, ensemble.postprocess, "mtcnn postprocess options")
        if len(members) != 3:
            raise ConfigError(f"mtcnn needs 3 stages (pnet, rnet, onet), got {len(members)}")
        super().__init__(members[0][0], members[0][1], options, **kwargs)
        self.ensemble = ensemble
        self.members = list(members)
        pnet = members[0][0]
        sides = [pnet.dims.get(d) for d in ("height", "width")]
        if None in sides:
            raise ConfigError(f"mtcnn's first stage {pnet.name!r} needs dynamic height and width dims")
        self.level_range = (max(s.min for s in sides), min(s.max for s in sides))  # type: ignore[union-attr]

    @property
    def runners(self) -> list[Runner]:
        return [runner for _, runner in self.members]

    def stage_batch(self, index: int) -> int:
        spec, runner = self.members[index]
        limit = runner.profile.max if runner.profile else spec.profile.max
        return min(limit, self.batch_limit) if self.batch_limit else limit

    def prepare(self, item: np.ndarray, source: str) -> Prepared:
        image = to_rgb_uint8(item, source=source, max_pixels=self.max_pixels)
        height, width = image.shape[:2]
        opts: post.MtcnnOptions = self.options
        scales = post.pyramid_scales(height, width, opts.min_face_size, opts.factor)
        if scales:
            top = post.level_size(height, width, scales[0])
            high = self.level_range[1]
            if max(top) > high:
                raise InputValidationError(
                    f"{source}: image {width}x{height} makes a first pyramid level of {top[1]}x{top[0]}, "
                    f"P-Net takes at most {high} px a side",
                    hint=f"downscale the image or raise min_face_size above {opts.min_face_size:g}")
        return Prepared(source, {}, image)

    def run_prepared(self, items: Sequence[Prepared]) -> list[Result]:
        return self.cascade(items)[0]

    def cascade(self, items: Sequence[Prepared]) -> tuple[list[Result], list[tuple[np.ndarray, np.ndarray]]]:
        """The faces of each image, and the boxes its R-Net and O-Net crops were cut from (two
        (K, 4) float32 arrays per image; parity compares where they fall on the pixel grid)."""
        if not items:
            return [], []
        images = [item.meta for item in items]
        broken: dict[int, set[str]] = {}  # image -> the stage outputs that held NaN or inf for it
        boxes, image_index = self.pnet_stage(images, broken)
        to_rnet = boxes[:, :4], image_index
        boxes, image_index = self.rnet_stage(images, boxes, image_index, broken)
        to_onet = boxes[:, :4], image_index
        boxes, probs, landmarks, image_index = self.onet_stage(images, boxes, image_index, broken)
        results: list[Result] = []
        for i, item in enumerate(items):
            if i in broken:
                results.append(nonfinite_record(item.source, sorted(broken[i])))
                continue
            mine = np.flatnonzero(image_index == i)
            results.append(FacesResult(item.source, item.meta.shape[:2], boxes[mine].astype(np.float32),
                                       probs[mine].astype(np.float32), landmarks[mine].astype(np.float32)))
        cropped = [(to_rnet[0][to_rnet[1] == i], to_onet[0][to_onet[1] == i]) for i in range(len(items))]
        return results, cropped

    def postprocess(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Result]:
        raise NotImplementedError("mtcnn runs its stages in run_prepared")

    # `run` streams through the guarded entry points: the three stages depend on each other's
    # results, so the whole cascade of a batch runs in the second (postprocess) step
    def infer_guarded(self, items: Sequence[Prepared], buffers: Any = None) -> list[Inferred]:
        return [Inferred(tuple(items), {})] if items else []

    def postprocess_guarded(self, inferred: Inferred) -> list[Result]:
        return self.run_prepared(inferred.items)

    # stages ----------------------------------------------------------------------------
    def finite_rows(self, stage: int, out: Mapping[str, np.ndarray], index: np.ndarray,
                    broken: dict[int, set[str]]) -> np.ndarray:
        """Which rows of a stage's outputs are finite; the image of any other row is noted in
        ``broken`` with the outputs' names (its result becomes an error record)."""
        ok = np.ones(len(index), bool)
        for name, value in out.items():
            finite = np.isfinite(value.reshape(len(value), -1)).all(axis=1)
            for i in np.unique(index[~finite]):
                broken.setdefault(int(i), set()).add(f"{self.members[stage][0].name}:{name}")
            ok &= finite
        return ok

    def pnet_stage(self, images: Sequence[np.ndarray], broken: dict[int, set[str]] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate boxes (K, 5: xyxy + P-Net probability, regressed and squared) and their
        image indices: P-Net over every image's pyramid, NMS per level and image, then per image.
        An image whose P-Net outputs hold NaN or inf is noted in ``broken`` and gets no box."""
        broken = {} if broken is None else broken
        opts: post.MtcnnOptions = self.options
        spec, runner = self.members[0]
        # (level index, level shape) -> images sharing that input shape: one batched call each
        groups: dict[tuple[int, tuple[int, int]], list[int]] = defaultdict(list)
        scales = [post.pyramid_scales(*im.shape[:2], opts.min_face_size, opts.factor) for im in images]
        for i, image in enumerate(images):
            for level, scale in enumerate(scales[i]):
                groups[(level, post.level_size(*image.shape[:2], scale))].append(i)
        found = []
        for (level, (height, width)), members in sorted(groups.items()):
            batch = np.stack([post.to_network(post.resize_area(images[i], height, width)) for i in members])
            out = infer_in_chunks(runner, {spec.inputs[0].name: batch}, self.stage_batch(0))
            finite = self.finite_rows(0, out, np.asarray(members), broken)
            for j, i in enumerate(members):
                if not finite[j]:
                    continue
                boxes, extra, _ = post.proposals(out["offsets"][j:j + 1],
                                                 post.face_probability(out["face_logit"][j:j + 1]),
                                                 scales[i][level], opts.thresholds[0])
                keep = post.group_nms(boxes, extra[:, 0], np.zeros(len(boxes), np.int64), opts.scale_nms)
                found.append((np.full(len(keep), i), boxes[keep], extra[keep]))
        if not found:
            return np.zeros((0, 5), np.float32), np.zeros(0, np.int64)
        index = np.concatenate([f[0] for f in found]).astype(np.int64)
        boxes = np.concatenate([f[1] for f in found])
        extra = np.concatenate([f[2] for f in found])
        keep = post.group_nms(boxes, extra[:, 0], index, opts.pnet_nms)
        boxes, extra, index = boxes[keep], extra[keep], index[keep]
        squared = post.square(post.regress(boxes, extra[:, 1:5], plus_one=False))
        return np.concatenate([squared, extra[:, :1]], axis=1).astype(np.float32), index

    def _stage_outputs(self, stage: int, images: Sequence[np.ndarray], boxes: np.ndarray,
                       index: np.ndarray, size: int) -> dict[str, np.ndarray]:
        spec, runner = self.members[stage]
        batch = np.zeros((len(boxes), 3, size, size), np.float32)
        for i in np.unique(index):
            mine = np.flatnonzero(index == i)
            height, width = images[i].shape[:2]
            batch[mine] = post.crops(images[i], post.crop_windows(boxes[mine, :4], height, width), size)
        return infer_in_chunks(runner, {spec.inputs[0].name: batch}, self.stage_batch(stage))

    def rnet_stage(self, images: Sequence[np.ndarray], boxes: np.ndarray, index: np.ndarray,
                   broken: dict[int, set[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """R-Net over the 24x24 crops of every candidate of every image: threshold, NMS per image,
        regression (+1 sizes), squaring. Rows with NaN or inf are dropped, their image noted."""
        if not len(boxes):
            return boxes, index
        opts: post.MtcnnOptions = self.options
        out = self._stage_outputs(1, images, boxes, index, post.RNET_SIZE)
        finite = self.finite_rows(1, out, index, {} if broken is None else broken)
        prob = post.face_probability(out["face_logit"])
        passed = finite & (prob > opts.thresholds[1])
        boxes = np.concatenate([boxes[passed, :4], prob[passed, None]], axis=1)
        offsets, index = out["offsets"][passed], index[passed]
        keep = post.group_nms(boxes[:, :4], boxes[:, 4], index, opts.rnet_nms)
        boxes, offsets, index = boxes[keep], offsets[keep], index[keep]
        regressed = post.square(post.regress(boxes[:, :4], offsets, plus_one=True))
        return np.concatenate([regressed, boxes[:, 4:5]], axis=1).astype(np.float32), index

    def onet_stage(self, images: Sequence[np.ndarray], boxes: np.ndarray, index: np.ndarray,
                   broken: dict[int, set[str]] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """O-Net over the 48x48 crops: threshold, landmarks to original pixels, regression, then
        the "Min"-overlap NMS per image. Returns (boxes, probabilities, landmarks, image index).
        Rows with NaN or inf are dropped, their image noted in ``broken``."""
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32),
                 np.zeros(0, np.int64))
        if not len(boxes):
            return empty
        opts: post.MtcnnOptions = self.options
        out = self._stage_outputs(2, images, boxes, index, post.ONET_SIZE)
        finite = self.finite_rows(2, out, index, {} if broken is None else broken)
        prob = post.face_probability(out["face_logit"])
        passed = finite & (prob > opts.thresholds[2])
        probs, index = prob[passed], index[passed]
        landmarks = post.landmarks_to_pixels(boxes[passed, :4], out["landmarks"][passed])
        final = post.regress(boxes[passed, :4], out["offsets"][passed], plus_one=True)
        keep = post.min_overlap_nms(final, probs, index, opts.onet_nms)
        return final[keep], probs[keep], landmarks[keep], index[keep]
