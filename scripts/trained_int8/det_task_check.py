"""What the detector's FP16/INT8 failures mean for text detection (a diagnostic beside the gate).

batchforge's tensors family judges the (B, 1, 640, 640) probability map pixel by pixel
(raw_max_rel = the largest |difference| over the largest |value|, 1.0). DBNet's output is read
by thresholding it (PP-OCR: 0.3) into text regions. This compares, on the held-out images, each
precision's map with FP32's: the pixel error distribution, the binarisation at 0.3, and the text
regions (connected components of >= 10 px, matched by box IoU >= 0.5).

    python det_task_check.py ARTIFACTS/ppocr_det DATA/det_eval [OUT.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
THRESH, MIN_AREA, MATCH_IOU = 0.3, 10, 0.5


def load(folder: Path) -> np.ndarray:
    items = []
    for f in sorted(folder.glob("*.png")):
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (640, 640), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        items.append(((rgb - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(items).astype(np.float32)


def run(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 4]})[0] for i in range(0, len(x), 4)])[:, 0]


def boxes(prob: np.ndarray) -> list[tuple[int, int, int, int]]:
    n, _, stats, _ = cv2.connectedComponentsWithStats((prob > THRESH).astype(np.uint8), connectivity=4)
    return [tuple(stats[i, :4]) for i in range(1, n) if stats[i, 4] >= MIN_AREA]


def iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0, min(ax2, bx2) - max(ax1, bx1)), max(0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    diff = np.abs(ref - got)
    rb, gb = ref > THRESH, got > THRESH
    matched, ious, total_ref, total_got = 0, [], 0, 0
    for r, g in zip(ref, got):
        br, bg = boxes(r), boxes(g)
        total_ref, total_got = total_ref + len(br), total_got + len(bg)
        for b in br:
            best = max((iou(b, c) for c in bg), default=0.0)
            if best >= MATCH_IOU:
                matched += 1
                ious.append(best)
    where = np.unravel_index(diff.argmax(), diff.shape)
    return {
        "max_abs": float(diff.max()), "max_abs_at": [int(v) for v in where],
        "ref_at_max": float(ref[where]), "got_at_max": float(got[where]),
        "p99_abs": float(np.quantile(diff, 0.99)), "p99_99_abs": float(np.quantile(diff, 0.9999)),
        "pixels_abs_gt_0.1": float((diff > 0.1).mean()),
        "binary_disagree_of_text_pixels": float((rb != gb).sum() / max(1, (rb | gb).sum())),
        "regions_ref": total_ref, "regions_got": total_got,
        "region_recall": matched / max(1, total_ref), "region_precision": matched / max(1, total_got),
        "matched_iou_min": float(min(ious)) if ious else None,
        "matched_iou_mean": float(np.mean(ious)) if ious else None,
    }


def main() -> None:
    art, data = Path(sys.argv[1]), Path(sys.argv[2])
    x = load(data)
    ref = run(art / "model.fp32.onnx", x)
    result = {"items": len(x), "threshold": THRESH}
    for name, file in (("fp16", "model.fp16.onnx"),
                       ("int8 (CPU backend: model.int8.onnx as written)", "engine.int8.ort.onnx"),
                       ("int8 CPU form (not adopted)", "model.int8.cpu.onnx")):
        if (art / file).exists():
            result[name] = compare(ref, run(art / file, x))
            print(name, json.dumps(result[name]))
    if len(sys.argv) > 3:
        Path(sys.argv[3]).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
