"""Defects post-processing, tiling, the anomaly pipeline and infer_config.json (no torch, no model)."""

import json

import cv2
import numpy as np
import pytest

from batchforge.cli import main
from batchforge.errors import ConfigError, InputValidationError
from batchforge.runtime.batching import stack_feeds
from batchforge.runtime.infer_config import (
    SCHEMA_VERSION,
    infer_config_document,
    load_infer_config,
    parse_infer_config,
)
from batchforge.runtime.pipelines.anomaly import AnomalyPipeline
from batchforge.runtime.post.anomaly import AnomalyOptions, DefectsOptions, find_defects, smooth_map
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import ModelSpec, Preprocess, ProfileRange, TensorSpec, parse_options
from batchforge.runtime.tiling import Blend, blend_tiles, blend_weights, cut_tiles, tile_grid
from batchforge.runtime.validation import IOMeta

SIZE = 64


def blobs_map() -> np.ndarray:
    """A 40x60 map: A (plateau 1.2 with a 2.0 seed), B (plateau 1.2, no seed), C (3.0 square)."""
    m = np.zeros((40, 60), np.float32)
    m[5:15, 5:20] = 1.2
    m[9, 10] = 2.0  # A's seed
    m[25:35, 5:20] = 1.2  # B: never reaches the high threshold
    m[20:26, 40:46] = 3.0  # C
    return m


def boxes(regions) -> list[list[int]]:
    return regions.boxes.astype(int).tolist()


HYST = {"hysteresis_high": 1.5, "hysteresis_low": 1.0}


# --- defects steps ---------------------------------------------------------------------------
def test_default_options_find_nothing_and_plain_threshold_equals_opencv_components():
    m = blobs_map()
    assert len(find_defects(m, DefectsOptions())) == 0
    regions = find_defects(m, DefectsOptions(hysteresis_high=1.0))
    count, _, stats, _ = cv2.connectedComponentsWithStats((m >= 1.0).astype(np.uint8), connectivity=8)
    expected = sorted([x, y, x + w, y + h] for x, y, w, h, _ in stats[1:])
    assert sorted(boxes(regions)) == expected and count - 1 == 3
    assert sorted(regions.areas.tolist()) == sorted(stats[1:, 4].tolist())


def test_hysteresis_grows_from_seeds_only():
    m = blobs_map()
    grown = find_defects(m, DefectsOptions(**HYST))
    assert boxes(grown) == [[40, 20, 46, 26], [5, 5, 20, 15]]  # C (score 3) first, then A
    assert grown.areas.tolist() == [36, 150] and grown.scores.tolist() == [3.0, 2.0]
    single = find_defects(m, DefectsOptions(hysteresis_high=1.5))
    assert boxes(single) == [[40, 20, 46, 26], [10, 9, 11, 10]]  # A shrinks to its seed
    swapped = find_defects(m, DefectsOptions(hysteresis_high=1.0, hysteresis_low=1.5))
    assert boxes(swapped) == boxes(single)  # documented: a plain threshold at the (higher) low


@pytest.mark.parametrize(("kind", "peak", "area"), [("none", 9.0, 1), ("median", None, 0),
                                                   ("gaussian", 2.25, 9), ("box", 1.0, 9)])
def test_each_smoothing_kind(kind, peak, area):
    m = np.zeros((15, 15), np.float32)
    m[7, 7] = 9.0  # a one-pixel spike
    regions = find_defects(m, DefectsOptions(smoothing=kind, hysteresis_high=0.5))
    assert regions.areas.tolist() == ([area] if area else [])
    if peak is not None:
        assert regions.scores[0] == pytest.approx(peak)
    assert smooth_map(m, DefectsOptions()) is m  # off: the map itself


def test_border_ignore_drops_and_clips_regions_at_the_edge():
    m = np.zeros((30, 30), np.float32)
    m[0:2, 10:14] = 2.0  # inside the 3 px band: dropped
    m[1:8, 20:25] = 2.0  # straddles it: clipped
    m[12:16, 12:16] = 2.0
    assert len(find_defects(m, DefectsOptions(hysteresis_high=1.0))) == 3
    regions = find_defects(m, DefectsOptions(hysteresis_high=1.0, border_ignore_px=3))
    assert sorted(boxes(regions)) == [[12, 12, 16, 16], [20, 3, 25, 8]]


def test_connectivity_4_splits_diagonal_neighbours():
    m = np.zeros((10, 10), np.float32)
    m[2, 2] = m[3, 3] = 2.0
    assert len(find_defects(m, DefectsOptions(hysteresis_high=1.0))) == 1
    assert len(find_defects(m, DefectsOptions(hysteresis_high=1.0, connectivity=4))) == 2


def test_area_and_aspect_filters():
    m = np.zeros((40, 40), np.float32)
    m[2:4, 2:4] = 2.0  # area 4
    m[10:30, 10:11] = 2.0  # a 1x20 line
    m[30:38, 25:33] = 2.0  # an 8x8 square
    base = {"hysteresis_high": 1.0}
    assert len(find_defects(m, DefectsOptions(**base))) == 3
    assert sorted(find_defects(m, DefectsOptions(**base, min_area=5)).areas.tolist()) == [20, 64]
    assert find_defects(m, DefectsOptions(**base, max_area=20)).areas.tolist() == [4, 20]
    assert sorted(find_defects(m, DefectsOptions(**base, max_aspect_ratio=5)).areas.tolist()) == [4, 64]


def test_solidity_filter_drops_a_ring_and_keeps_a_square():
    m = np.zeros((50, 50), np.float32)
    cv2.circle(m, (15, 15), 10, 2.0, 1)  # a thin ring: solidity ~0.2
    m[30:40, 30:40] = 2.0
    regions = find_defects(m, DefectsOptions(hysteresis_high=1.0, min_solidity=0.6))
    assert boxes(regions) == [[30, 30, 40, 40]]


def test_merge_joins_nearby_regions_transitively():
    m = np.zeros((20, 60), np.float32)
    m[5:10, 0:5] = 1.5
    m[5:10, 9:14] = 3.0  # 4 px from the first
    m[5:10, 18:23] = 2.0  # 4 px from the second
    m[5:10, 40:45] = 2.5  # far away
    base = {"hysteresis_high": 1.0}
    assert len(find_defects(m, DefectsOptions(**base, merge_distance_px=3))) == 4
    merged = find_defects(m, DefectsOptions(**base, merge_distance_px=4))
    assert boxes(merged) == [[0, 5, 23, 10], [40, 5, 45, 10]]
    assert merged.areas.tolist() == [75, 25] and merged.scores.tolist() == [3.0, 2.5]
    assert merged.mean_scores[0] == pytest.approx((1.5 + 3.0 + 2.0) / 3)
    assert merged.centroids[0].tolist() == pytest.approx([11.5, 7.5])


def test_ids_follow_raster_order_and_order_follows_score_with_ties_by_id():
    m = np.zeros((30, 30), np.float32)
    m[20:22, 2:4] = 5.0
    m[2:4, 20:22] = 3.0
    m[1:3, 2:4] = 3.0  # the same score as the one above
    m[10:12, 10:12] = 4.0
    # first pixels in raster order: (1, 2) id 0, (2, 20) id 1, (10, 10) id 2, (20, 2) id 3
    regions = find_defects(m, DefectsOptions(hysteresis_high=1.0))
    assert regions.ids.tolist() == [3, 2, 0, 1]
    assert regions.scores.tolist() == [5.0, 4.0, 3.0, 3.0]
    top = find_defects(m, DefectsOptions(hysteresis_high=1.0, max_regions=2))
    assert top.ids.tolist() == [3, 2]  # ids do not change when regions are cut
    again = find_defects(m.copy(), DefectsOptions(hysteresis_high=1.0))
    assert all(np.array_equal(getattr(regions, k), getattr(again, k))
               for k in ("ids", "boxes", "areas", "scores", "mean_scores", "centroids"))


def test_bad_maps_are_refused():
    with pytest.raises(InputValidationError, match="NaN/Inf"):
        find_defects(np.full((4, 4), np.nan, np.float32), DefectsOptions())
    with pytest.raises(InputValidationError, match="2-D"):
        find_defects(np.zeros((1, 4, 4), np.float32), DefectsOptions())
    with pytest.raises(InputValidationError, match="floating point"):
        find_defects(np.zeros((4, 4), np.int32), DefectsOptions())


def test_options_name_every_problem():
    with pytest.raises(ConfigError) as info:
        DefectsOptions(smoothing="bilateral", hysteresis_high="1", min_area=-1, connectivity=6)
    assert info.value.problems == [
        "smoothing: expected one of 'none', 'median', 'gaussian', 'box', got str 'bilateral'",
        "hysteresis_high: expected a number or null, got str '1'",
        "connectivity: expected 4 or 8, got 6",
        "min_area: expected >= 0, got -1",
    ]
    with pytest.raises(ConfigError, match="median smoothing of a float map supports 3 or 5"):
        DefectsOptions(smoothing="median", smoothing_ksize=7)
    opts = parse_options(AnomalyOptions, {"defects": {"hysteresis_high": 2}}, "anomaly options")
    assert opts.defects.hysteresis_high == 2.0 and isinstance(opts.defects.hysteresis_high, float)


# --- tiling ----------------------------------------------------------------------------------
def test_tile_grid_covers_the_image_with_at_least_the_overlap():
    grid = tile_grid(300, 700, 128, 128, 32)
    assert grid.ys[0] == 0 and grid.ys[-1] == 300 - 128 and grid.xs[-1] == 700 - 128
    assert min(np.diff(grid.xs)) >= 1 and max(np.diff(grid.xs)) <= 128 - 32
    small = tile_grid(100, 500, 128, 128, 16)  # shorter than a tile: padded, one row
    assert small.ys == (0,) and small.padded_shape == (128, 500)
    with pytest.raises(InputValidationError, match="smaller than the tile"):
        tile_grid(300, 300, 128, 128, 128)


@pytest.mark.parametrize("blend", list(Blend))
def test_cut_then_blend_is_the_identity(blend):
    image = np.random.default_rng(0).random((100, 230)).astype(np.float32)
    grid = tile_grid(100, 230, 64, 64, 16)
    tiles = cut_tiles(image, grid)
    out = blend_tiles(tiles, grid, blend_weights(64, 64, 16, blend))
    np.testing.assert_allclose(out, image, atol=1e-6)


def edge_effect_tiles(count: int, size: int) -> np.ndarray:
    """What a CNN with zero padding gives on a uniform input: the value sags near tile edges."""
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float64)
    sag = 1.0 - 0.5 * np.exp(-d / 6.0)
    return np.broadcast_to(np.outer(sag, sag), (count, size, size))


def max_step(m: np.ndarray) -> float:
    return float(max(np.abs(np.diff(m, axis=0)).max(), np.abs(np.diff(m, axis=1)).max()))


def test_uniform_input_shows_no_seam_with_blending():
    grid = tile_grid(200, 300, SIZE, SIZE, 24)
    tiles = edge_effect_tiles(grid.count, SIZE)
    inner = (slice(20, -20), slice(20, -20))  # away from the image edges
    steps = {b: max_step(blend_tiles(tiles, grid, blend_weights(SIZE, SIZE, 24, b))[inner]) for b in Blend}
    within_tile = max_step(tiles[0][SIZE // 2 - 8 :, SIZE // 2 - 8 :][:16, :16])
    assert steps[Blend.UNIFORM] > 0.1  # plain averaging: a step where a tile ends
    assert steps[Blend.LINEAR] < 0.03 and steps[Blend.GAUSSIAN] < 0.03
    assert within_tile < 0.01


# --- pipeline (fake runner: the map is the normalised red channel, score its maximum) ----------
class RedChannelRunner(Runner):
    backend = "fake"

    def __init__(self, sag: bool = False) -> None:
        super().__init__(name="red", profile=ProfileRange(1, 2, 4))
        self.batches: list[int] = []
        self.sag = sag

    @property
    def output_names(self):
        return ("anomaly_map", "score")

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def input_metadata_impl(self):
        return {"images": IOMeta("images", ("batch", 3, SIZE, SIZE), np.dtype("float32"))}

    def infer_impl(self, feed):
        self.batches.append(len(feed["images"]))
        maps = feed["images"][:, :1] + 3.0
        if self.sag:
            maps = maps * edge_effect_tiles(1, SIZE).astype(np.float32)[None]
        return {"anomaly_map": maps, "score": maps.max(axis=(1, 2, 3))}


def make_pipeline(postprocess, runner=None) -> AnomalyPipeline:
    spec = ModelSpec("fake", "anomaly", (TensorSpec("images", ("batch", 3, SIZE, SIZE)),),
                     ("anomaly_map", "score"), ProfileRange(1, 2, 4),
                     Preprocess(SIZE, SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), postprocess)
    return AnomalyPipeline(spec, runner or RedChannelRunner()).activate()


def red_squares(seed: int, shape=(SIZE, SIZE)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((*shape, 3), np.uint8)
    for _ in range(4):
        y, x = rng.integers(2, shape[0] - 10), rng.integers(2, shape[1] - 10)
        h, w = rng.integers(2, 8, 2)
        image[y : y + h, x : x + w, 0] = int(rng.integers(150, 256))
    return image


CANONICAL = {"defects": {"hysteresis_high": 3.5, "hysteresis_low": 3.2, "min_area": 2, "max_regions": 3,
                         "merge_distance_px": 2.0}}


def records(results) -> list[list[dict]]:
    return [r.to_record()["regions"] for r in results]


def test_region_order_and_ids_identical_across_runs_and_batch_sizes():
    images = [red_squares(i) for i in range(7)] + [red_squares(9, (150, 200))]
    pipe = make_pipeline(CANONICAL)
    reference = records(pipe(images))
    assert sum(map(len, reference)) >= 10
    for batch in (1, 3, 4):
        pipe.batch_limit = batch
        assert records(pipe(images)) == reference
    assert records(make_pipeline(CANONICAL)(images)) == reference  # a fresh run
    sources = [str(i) for i in range(len(images))]
    assert records(pipe(images[::-1], sources[::-1]))[::-1] == reference


def test_regions_are_mapped_to_image_pixels():
    image = np.zeros((32, 48, 3), np.uint8)  # stretched to 64x64: x * 4/3, y * 2
    image[4:12, 12:36, 0] = 255
    result = make_pipeline(CANONICAL)([image])[0]
    (region,) = result.regions
    assert region.bbox == pytest.approx((12, 4, 36, 12), abs=0.75)
    assert region.area == pytest.approx(8 * 24, rel=0.15)  # bilinear edges reach the low threshold
    assert region.centroid == pytest.approx((24, 8), abs=0.5)
    assert result.tiles == 1 and result.anomaly_map.shape == (SIZE, SIZE)


def test_large_images_are_tiled_batched_and_blended():
    image = red_squares(3, (150, 230))
    runner = RedChannelRunner()
    result = make_pipeline(CANONICAL, runner)([image])[0]
    grid = tile_grid(150, 230, SIZE, SIZE, 32)
    assert result.tiles == grid.count and result.anomaly_map.shape == (150, 230)
    assert max(runner.batches) == 4 and sum(runner.batches) == grid.count  # chunked to the profile max
    expected = image[:, :, 0].astype(np.float32) / 255.0 + 3.0
    np.testing.assert_allclose(result.anomaly_map, expected, atol=1e-5)
    untiled = make_pipeline({**CANONICAL, "tiling": {"enabled": False}})([image])[0]
    assert untiled.tiles == 1 and untiled.anomaly_map.shape == (SIZE, SIZE)


def test_prepare_keeps_one_model_input_per_item_for_generic_consumers():
    pipe = make_pipeline(CANONICAL)
    images = [red_squares(3, (150, 230)), red_squares(4)]
    prepared = [pipe.prepare(img, str(i)) for i, img in enumerate(images)]
    assert [p.feed["images"].shape for p in prepared] == [(3, SIZE, SIZE)] * 2  # calibration, parity
    assert prepared[0].meta.tiles.shape == (tile_grid(150, 230, SIZE, SIZE, 32).count, 3, SIZE, SIZE)
    resized = pipe.postprocess(pipe.infer(stack_feeds([p.feed for p in prepared])), prepared)
    assert [r.tiles for r in resized] == [1, 1] and resized[0].anomaly_map.shape == (SIZE, SIZE)
    assert records(resized[1:]) == records(pipe(images[1:]))
    assert resized[0].regions and max(r.bbox[2] for r in resized[0].regions) <= 230


def test_pipeline_map_over_a_uniform_large_image_has_no_seam():
    image = np.full((200, 300, 3), 200, np.uint8)
    inner = (slice(20, -20), slice(20, -20))
    linear = make_pipeline({}, RedChannelRunner(sag=True))([image])[0].anomaly_map
    plain = make_pipeline({"tiling": {"blend": "uniform"}}, RedChannelRunner(sag=True))
    uniform = plain([image])[0].anomaly_map
    assert max_step(uniform[inner]) > 5 * max_step(linear[inner])
    assert max_step(linear[inner]) < 0.03 * float(linear.max())


def test_result_record_and_image_threshold():
    image = red_squares(1)
    record = make_pipeline({**CANONICAL, "image_threshold": 3.5})([image])[0].to_record()
    assert set(record) == {"source", "ok", "score", "anomalous", "regions", "map_shape", "tiles"}
    assert record["anomalous"] is True
    assert set(record["regions"][0]) == {"id", "bbox", "area", "score", "mean_score", "centroid"}
    assert "anomalous" not in make_pipeline(CANONICAL)([image])[0].to_record()
    with pytest.raises(ConfigError, match="overlap_px must be smaller than the model input"):
        make_pipeline({"tiling": {"overlap_px": SIZE}})


# --- infer_config.json -----------------------------------------------------------------------
def write(tmp_path, data, name="infer_config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_every_problem_is_named(tmp_path):
    path = write(tmp_path, {"schema_version": 2, "colour": "red",
                            "defects": {"hysteresis_high": "high", "min_area": 1.5, "shape": 1},
                            "tiling": {"blend": "cubic"}})
    with pytest.raises(ConfigError) as info:
        load_infer_config(path)
    assert info.value.problems == [
        "unknown key 'colour'",
        "unknown key 'defects.shape'",
        "defects.hysteresis_high: expected a number or null, got str 'high'",
        "defects.min_area: expected an integer, got float 1.5",
        "tiling.blend: expected one of 'linear', 'gaussian', 'uniform', got str 'cubic'",
    ]


def test_newer_schema_and_swapped_thresholds_are_named(tmp_path):
    _, problems = parse_infer_config({"schema_version": SCHEMA_VERSION + 1})
    assert problems == [f"schema_version {SCHEMA_VERSION + 1} is newer than this batchforge reads "
                        f"({SCHEMA_VERSION}): upgrade batchforge, or write a version-{SCHEMA_VERSION} file"]
    _, problems = parse_infer_config({"schema_version": 1, "tiling": {},
                                      "defects": {"hysteresis_high": 1.0, "hysteresis_low": 2.0}})
    assert problems[0] == "'tiling' needs schema_version >= 2, the file says 1"
    assert "hysteresis_low (2) is above defects.hysteresis_high (1)" in problems[1]
    missing = "missing key 'schema_version' (this batchforge writes 2)"
    assert parse_infer_config({"defects": {}})[1] == [missing]
    assert parse_infer_config([1])[1] == ["expected a JSON object at the top level, got list"]


def test_old_config_loads_with_defaults_and_overrides_whole_sections(tmp_path):
    config = load_infer_config(write(tmp_path, {"schema_version": 1, "defects": {"hysteresis_high": 3.5}}))
    assert config.schema_version == 1 and config.given == ("defects",)
    assert config.options.defects == DefectsOptions(hysteresis_high=3.5)  # missing keys: defaults
    pipe = make_pipeline(CANONICAL)
    options = parse_options(AnomalyOptions, {**pipe.spec.postprocess, **config.overrides()}, "options")
    assert options.defects.min_area == 0 and options.tiling == AnomalyOptions().tiling
    image = red_squares(5)
    with_config = AnomalyPipeline(pipe.spec, RedChannelRunner(), options).activate()([image])[0]
    plain = make_pipeline({"defects": {"hysteresis_high": 3.5}})([image])[0]
    assert records([with_config]) == records([plain])


def test_written_document_round_trips(tmp_path):
    options = parse_options(AnomalyOptions, CANONICAL, "options")
    config = load_infer_config(write(tmp_path, infer_config_document(options, model="fake")))
    assert config.options == options and config.model == "fake"
    config.check_model("fake")
    with pytest.raises(ConfigError, match="written for model 'fake', not 'other'"):
        config.check_model("other")


def test_validate_config_command(tmp_path, capsys):
    good = write(tmp_path, {"schema_version": 2, "defects": {"hysteresis_high": 1.2}}, "good.json")
    assert main(["validate-config", str(good)]) == 0
    assert "valid (schema_version 2; sets defects)" in capsys.readouterr().out
    bad = write(tmp_path, {"schema_version": 9, "x": 1, "image_threshold": "high"}, "bad.json")
    assert main(["validate-config", str(bad)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[-1].endswith("INVALID (3 problems)")
    assert "schema_version 9 is newer" in out[0] and "unknown key 'x'" in out[1]
    assert "image_threshold: expected a number or null, got str 'high'" in out[2]
    assert main(["validate-config", str(write(tmp_path, "{not json", "broken.json"))]) == 2
    assert "is not valid JSON" in capsys.readouterr().out
