"""Activation ranges for INT8 with bounded memory: onnxruntime.quantization's own calibrators,
fed one batch at a time.

``quantize_static`` (and ``HistogramCalibrater.collect_data``) keep every calibration batch's
activations of every calibrated tensor in memory before building one histogram per tensor:
measured 8.3 GB resident for ViT-B/16 on 32 images. Here the calibrator ORT builds (augmented
graph, session, collector, percentile / KL threshold search) is kept; only the accumulation is
streamed, in two passes over the batches: the first finds each tensor's range, the second adds each
batch's histogram over that fixed range. Histograms over a fixed range add up exactly, so the
result is bit-identical to ORT's one-shot histogram (tested), with one batch of activations in
memory at a time. MinMax needs none of this: its augmented graph reduces every tensor to a
min and a max per batch, so ORT's own collection is used as it is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from batchforge.calibration.data import CalibrationData, FeedReader

# Items per calibration run: every calibrated tensor of the batch is an output at once (detector,
# 8 items of 1280x720 -> 6.55 GB resident, 1 item -> 1.99 GB)
STREAM_BATCH = 1


def write_ranges(fp32_path: Path, data: CalibrationData, cache: Path, method: str, quantized_ops: Iterable[str],
                 extra_options: dict[str, Any] | None = None, batch_size: int = STREAM_BATCH) -> None:
    """Calibrates ``fp32_path`` on ``data`` (``batch_size`` items per run) and saves the ranges as
    an ORT calibration cache."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data

    kind = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]
    options = dict(extra_options or {})
    with tempfile.TemporaryDirectory(prefix="batchforge-calib-") as tmp:
        calibrator = create_calibrator(fp32_path, list(quantized_ops),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=kind, extra_options=options)
        if method == "minmax":  # its augmented graph reduces each tensor to min/max in-graph: small
            calibrator.collect_data(FeedReader(data, batch_size))
        else:
            calibrator.collector = streamed_histograms(calibrator, data, batch_size)
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)


def _activations(calibrator: Any, data: CalibrationData, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The calibrated tensors' values, one batch at a time."""
    names = [o.name for o in calibrator.infer_session.get_outputs()]
    wanted = calibrator.tensors_to_calibrate
    reader = FeedReader(data, batch_size)
    while (feed := reader.get_next()) is not None:
        values = calibrator.infer_session.run(None, feed)
        yield {n: v for n, v in zip(names, values) if n in wanted}


def streamed_histograms(calibrator: Any, data: CalibrationData, batch_size: int = STREAM_BATCH) -> Any:
    """ORT's HistogramCollector for ``calibrator``, its histograms built batch by batch exactly as
    ``HistogramCollector.collect`` builds them from all batches at once."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                   num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                   percentile=calibrator.percentile, scenario=calibrator.scenario)
    absolute = collector.method == "percentile" and collector.symmetric  # ORT's collect_absolute_value
    lo: dict[str, np.ndarray] = {}
    hi: dict[str, np.ndarray] = {}
    low: dict[str, np.ndarray] = {}  # min and max of |x|: the histogram range when absolute
    high: dict[str, np.ndarray] = {}
    for batch in _activations(calibrator, data, batch_size):  # pass 1: ranges
        for name, value in batch.items():
            flat = value.ravel()
            lo[name] = _fold(np.minimum, lo.get(name), np.nanmin(flat))
            hi[name] = _fold(np.maximum, hi.get(name), np.nanmax(flat))
            if absolute:
                magnitude = np.absolute(flat)
                low[name] = _fold(np.minimum, low.get(name), magnitude.min())
                high[name] = _fold(np.maximum, high.get(name), magnitude.max())
    edges_range: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in lo:
        if absolute:
            first, last = low[name], high[name]
        else:
            threshold = np.array(max(abs(lo[name]), abs(hi[name])), dtype=lo[name].dtype)
            first, last = -threshold, threshold
        edges_range[name] = (first, last)
    counts: dict[str, np.ndarray] = {}
    edges: dict[str, np.ndarray] = {}
    for batch in _activations(calibrator, data, batch_size):  # pass 2: histograms over the fixed ranges
        for name, value in batch.items():
            flat = value.ravel()
            # np.histogram widens equal ends by 0.5 whether the range is given or found
            hist, edge = np.histogram(np.absolute(flat) if absolute else flat, collector.num_bins,
                                      range=edges_range[name])
            counts[name] = hist if name not in counts else counts[name] + hist
            edges.setdefault(name, edge)  # the same edges every batch: the range is fixed
    for name in counts:
        if absolute:
            collector.histogram_dict[name] = (counts[name], edges[name].astype(lo[name].dtype), lo[name], hi[name])
        else:
            collector.histogram_dict[name] = (counts[name], edges[name], lo[name], hi[name],
                                              edges_range[name][1])
    return collector


def _fold(op: Any, old: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    return new if old is None else op(old, new)

