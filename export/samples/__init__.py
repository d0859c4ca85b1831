"""Deterministic synthetic data, one generator per family.

The same generators feed the main job's sample images, the parity evaluation sets, the
activation calibration of the zoo's initialisation and (on request) INT8 calibration. Each
generator takes ``(count, seed)`` and returns ``[(name, item), ...]``: RGB uint8 images for the
image families, float32 arrays otherwise. Nothing here needs torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from batchforge.families import FAMILIES
from batchforge.runtime.images import write_image

Generator = Callable[[int, int], list[tuple[str, np.ndarray]]]

SAMPLE_GENERATORS: dict[str, Generator] = {f.name: f.load_samples() for f in FAMILIES.values()}

# Seeds are kept apart so evaluation data never overlaps init-calibration data.
SEED_SAMPLES = 1000
SEED_EVAL = 2000
SEED_INIT = 3000
SEED_CALIBRATION = 4000


def generate(family: str, count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """``count`` deterministic items of ``family`` from ``seed``."""
    if family not in SAMPLE_GENERATORS:
        known = ", ".join(sorted(SAMPLE_GENERATORS))
        raise KeyError(f"no sample generator for family {family!r}; known: {known}")
    return SAMPLE_GENERATORS[family](count, seed)


def write_samples(family: str, out_dir: str | Path, count: int, seed: int = SEED_SAMPLES) -> list[Path]:
    """Writes generated samples as files (PNG for images, .npy for arrays); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, item in generate(family, count, seed):
        if item.dtype == np.uint8 and item.ndim == 3:
            path = out / f"{name}.png"
            write_image(path, item)
        else:
            path = out / f"{name}.npy"
            np.save(path, item, allow_pickle=False)
        paths.append(path)
    return paths
