"""Hostile files built in tmp_path for tests/hostile: image headers that lie, ONNX files whose
external data points elsewhere, broken safetensors."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
from helpers import tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.runtime import images
from batchforge.runtime.artifacts import ModelArtifacts, Precision, write_json_atomic

BACKEND = ["--backend", "onnxruntime-cpu", "--threads", "1"]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR says width x height (8-bit grey); ``idat`` is its compressed data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", idat or zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))


def zero_png(path: Path, side: int) -> None:
    """A valid all-zero grey PNG of side x side, compressed row by row (never held whole)."""
    compressor = zlib.compressobj(1)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    parts = [compressor.compress(row * 500) for _ in range(side // 500)]
    parts.append(compressor.compress(row * (side % 500)) + compressor.flush())
    path.write_bytes(png_claiming(side, side, b"".join(parts)))


def good_images(folder: Path, count: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"good{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def tiny_artifacts(root: Path, name: str = "tiny") -> ModelArtifacts:
    return write_artifact(root, tiny_embedder_onnx(), tiny_spec(name))


def rerecord(artifacts: ModelArtifacts, external: dict[str, str] | None = None) -> None:
    """Rewrites export.json so its hashes match the ONNX as it is now (as a hostile user would,
    without batchforge's own checks): ``external`` is the external_data entry."""
    path = artifacts.onnx(Precision.FP32)
    record = json.loads(artifacts.export_record_path.read_text())
    record["onnx"] = {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "external_data": external or {}}
    write_json_atomic(artifacts.export_record_path, record)


def point_external_data_at(artifacts: ModelArtifacts, location: str) -> None:
    """Saves the tiny model with every initializer stored at ``location`` (not checked)."""
    model = tiny_embedder_onnx()
    path = artifacts.onnx(Precision.FP32)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=60)  # W only: ORT needs "axes" inline
    saved = onnx.load(str(path), load_external_data=False)
    for tensor in saved.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(saved, str(path))
    rerecord(artifacts)


def refusal_peak_mib(path, max_pixels: int = images.DEFAULT_MAX_PIXELS) -> tuple[str, float]:
    """(refusal line, peak resident MiB) of ``read_image(path)`` in a fresh Python.

    ru_maxrss counts a forked child's pages copied from its parent (pytest: ~170 MB), so the
    child is started by a bare Python that reports the peak of its own children."""
    script = textwrap.dedent(f"""
        from batchforge.errors import InputValidationError
        from batchforge.runtime.images import read_image
        try:
            read_image({str(path)!r}, max_pixels={max_pixels})
        except InputValidationError as exc:
            print(exc.one_line())
    """)
    launcher = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", launcher, sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    message, peak_kib = done.stdout.splitlines()
    return message, int(peak_kib) / 1024


# case 1: a TIFF that lists its width/height twice -------------------------------------------


def run_tiny(tmp_path: Path, *extra: str) -> tuple[int, list[dict] | None]:
    """``run`` of the tiny model (tmp_path/artifacts) over tmp_path/in: (exit code, JSONL records
    or None when no output file was written)."""
    from batchforge.cli import main

    out = tmp_path / "r.jsonl"
    code = main(["run", "tiny", "--input", str(tmp_path / "in"), "--output", str(out),
                 "--output-dir", str(tmp_path / "artifacts"), "--batch-size", "2", *BACKEND, *extra])
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else None
    return code, records
