"""Anomaly pipeline: image -> anomaly map + image score -> defect regions in image pixels.

An image no larger than the model input is resized to it (the spec's preprocessing). A larger
one (in either dimension) is cut into overlapping tiles at its own resolution when
``tiling.enabled`` (the default), all tiles of all images of a batch go through the runner
together (chunked to the profile max), and the tile maps are blended back into one map of the
image's size (runtime.tiling); its image score is the highest tile score.

``prepare`` keeps the Pipeline contract -- one feed of the model's input shape per item (the
resized image) -- so generic consumers (calibration readers, the parity session) work on any
image; the tiles ride along in the item's meta and ``run_prepared`` sends those instead.
``postprocess`` accepts either: one output per item (the resized feeds) or one per tile.

Options come from the spec's ``postprocess`` (``AnomalyOptions``); an ``infer_config.json``
replaces whole sections of it (``batchforge.runtime.infer_config``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchforge.errors import ConfigError, InputValidationError
from batchforge.runtime.batching import BatchBuffers
from batchforge.runtime.images import to_rgb_uint8
from batchforge.runtime.pipelines.base import Pipeline, Prepared, image_feed
from batchforge.runtime.post.anomaly import AnomalyOptions, Regions, find_defects
from batchforge.runtime.preprocess import Geometry, preprocess_image, resize_float
from batchforge.runtime.results import Result
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import ModelSpec
from batchforge.runtime.tiling import TileGrid, blend_tiles, blend_weights, cut_tiles, tile_grid


@dataclass(frozen=True)
class AnomalyMeta:
    """One image's resize geometry and, when it is tiled, its grid and preprocessed tiles."""

    geometry: Geometry
    grid: TileGrid | None = None
    tiles: np.ndarray | None = None  # (T, C, H, W) model inputs, one per grid tile

    @property
    def tile_count(self) -> int:
        return self.grid.count if self.grid else 1


@dataclass(frozen=True)
class DefectRegion:
    """One defect region in original-image pixels (boxes ``[x0, y0, x1, y1)``, area in px²)."""

    id: int
    bbox: tuple[float, float, float, float]
    area: float
    score: float
    mean_score: float
    centroid: tuple[float, float]

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "bbox": [round(v, 2) for v in self.bbox], "area": round(self.area, 2),
                "score": self.score, "mean_score": self.mean_score,
                "centroid": [round(v, 2) for v in self.centroid]}


@dataclass(frozen=True)
class AnomalyResult(Result):
    """Image score, defect regions and the anomaly map (map pixels; not written to JSONL)."""

    score: float
    regions: tuple[DefectRegion, ...]
    anomaly_map: np.ndarray
    tiles: int = 1
    is_anomalous: bool | None = None

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        record["score"] = self.score
        if self.is_anomalous is not None:
            record["anomalous"] = self.is_anomalous
        record["regions"] = [r.to_record() for r in self.regions]
        record["map_shape"] = list(self.anomaly_map.shape)
        record["tiles"] = self.tiles
        return record


def regions_to_image(regions: Regions, map_shape: tuple[int, int], input_shape: tuple[int, int],
                     geometry: Geometry) -> tuple[DefectRegion, ...]:
    """Maps regions from map pixels through the model input to original-image pixels."""
    sy, sx = input_shape[0] / map_shape[0], input_shape[1] / map_shape[1]
    boxes = geometry.boxes_to_original(regions.boxes * np.array([sx, sy, sx, sy]))
    centres = geometry.to_original(regions.centroids * np.array([sx, sy]))
    pixel_area = sx * sy / (geometry.scale_x * geometry.scale_y)
    return tuple(
        DefectRegion(int(i), tuple(float(v) for v in box), float(a * pixel_area), float(s), float(m),
                     (float(c[0]), float(c[1])))
        for i, box, a, s, m, c in zip(regions.ids, boxes, regions.areas, regions.scores,
                                      regions.mean_scores, centres)
    )


class AnomalyPipeline(Pipeline):
    """Image -> anomaly map and score (tiled when large) -> defect regions."""

    family = "anomaly"
    options_type = AnomalyOptions

    def __init__(self, spec: ModelSpec, runner: Runner, options: AnomalyOptions | None = None,
                 **kwargs: Any) -> None:
        super().__init__(spec, runner, options, **kwargs)
        if len(self.spec.outputs) != 2:
            raise ConfigError(
                f"anomaly model {self.spec.name!r} must have 2 outputs (anomaly map, image score), "
                f"got {list(self.spec.outputs)}")
        if self.spec.preprocess is None:
            raise ConfigError(f"anomaly model {self.spec.name!r} has no image preprocessing spec")
        opts: AnomalyOptions = self.options
        self.input_shape = (self.spec.preprocess.height, self.spec.preprocess.width)
        if opts.tiling.overlap_px >= min(self.input_shape):
            raise ConfigError(
                f"tiling.overlap_px must be smaller than the model input {self.input_shape}, "
                f"got {opts.tiling.overlap_px}")
        self.weights = blend_weights(*self.input_shape, opts.tiling.overlap_px, opts.tiling.blend)

    @property
    def map_output(self) -> str:
        return self.spec.outputs[0]

    @property
    def score_output(self) -> str:
        return self.spec.outputs[1]

    def prepare(self, item: np.ndarray, source: str) -> Prepared:
        image = to_rgb_uint8(item, source=source, max_pixels=self.max_pixels)
        feed, geometry = image_feed(image, self.spec)
        height, width = image.shape[:2]
        opts: AnomalyOptions = self.options
        if not opts.tiling.enabled or (height <= self.input_shape[0] and width <= self.input_shape[1]):
            return Prepared(source, feed, AnomalyMeta(geometry))
        grid = tile_grid(height, width, *self.input_shape, opts.tiling.overlap_px)
        assert self.spec.preprocess is not None
        tiles = np.stack([preprocess_image(t, self.spec.preprocess)[0] for t in cut_tiles(image, grid)])
        return Prepared(source, feed, AnomalyMeta(geometry, grid, tiles))

    def batch_feed(self, items: Sequence[Prepared], buffers: BatchBuffers | None = None) -> dict[str, np.ndarray]:
        """Every tile of every item as one batch stream (untiled items are one tile)."""
        name = self.spec.inputs[0].name
        parts = [p.meta.tiles if p.meta.grid else p.feed[name][None] for p in items]
        return {name: np.concatenate(parts)}

    def rows_per_item(self, items: Sequence[Prepared]) -> list[int]:
        return [p.meta.tile_count for p in items]

    def postprocess(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Result]:
        maps, scores = outputs[self.map_output], outputs[self.score_output]
        counts = [p.meta.tile_count for p in items]
        per_tile = len(maps) == sum(counts) != len(items)
        if not per_tile:
            counts = [1] * len(items)  # outputs of the resized feeds
        if len(maps) != sum(counts) or len(scores) != sum(counts) or maps.ndim != 4 or maps.shape[1] != 1:
            raise InputValidationError(
                f"{self.spec.name}: expected {len(items)} (one per image) or {sum(counts)} (one per "
                f"tile) maps of shape (1, H, W) and scores, got maps {maps.shape} and scores {scores.shape}")
        results: list[Result] = []
        start = 0
        for item, count in zip(items, counts):
            part = slice(start, start + count)
            start += count
            results.append(self._result(item, maps[part, 0], scores[part], tiled=per_tile and count > 1))
        return results

    def _result(self, item: Prepared, maps: np.ndarray, scores: np.ndarray, tiled: bool) -> AnomalyResult:
        opts: AnomalyOptions = self.options
        meta: AnomalyMeta = item.meta
        if tiled:
            assert meta.grid is not None
            tiles = np.stack([resize_float(m.astype(np.float32), *self.input_shape) for m in maps])
            amap = blend_tiles(tiles, meta.grid, self.weights)
            input_shape, geometry = amap.shape, Geometry(*amap.shape, 1.0, 1.0, 0.0, 0.0)
        else:
            amap, input_shape, geometry = maps[0].astype(np.float32), self.input_shape, meta.geometry
        score = float(np.max(scores))
        regions = regions_to_image(find_defects(amap, opts.defects), amap.shape, input_shape, geometry)
        anomalous = None if opts.image_threshold is None else score >= opts.image_threshold
        return AnomalyResult(item.source, score, regions, amap, len(maps), anomalous)
