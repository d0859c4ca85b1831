"""Real photographs for the MTCNN family (scikit-image's bundled data, read lazily: the export
extra installs it): the astronaut (Eileen Collins), the cameraman, and mosaics of faces from
``lfw_subset`` (Labeled Faces in the Wild, 25x25 grey crops) upscaled onto a textured canvas
with non-face crops of the same set beside them.

The photographs feed the parity evaluation set (the detector judged against facenet-pytorch's
``detect()``, each stage's raw outputs against PyTorch); the samples feed INT8 calibration
(pyramid levels and crops of real images, never synthetic ones). They never share a face:
evaluation takes the second half of ``lfw_subset``'s 100 faces and 100 non-faces, the samples
the first half, and the astronaut and the cameraman are evaluation's alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from batchforge.runtime.post import mtcnn as post

MOSAIC_HEIGHT, MOSAIC_WIDTH = 240, 320
MOSAIC_FACES, MOSAIC_DISTRACTORS = 4, 2
FACE_SIDES = (56, 96)  # upscaled LFW faces, pixels a side


def _skimage_data() -> Any:
    try:
        from skimage import data
    except ImportError:
        from batchforge.errors import UsageError

        raise UsageError("the MTCNN photographs come from scikit-image, which is not installed",
                         hint="install the export extra: scripts/setup_venv.sh") from None
    return data


def lfw_crops(evaluation: bool) -> tuple[np.ndarray, np.ndarray]:
    """(faces (50, 25, 25, 3), non-faces (50, 25, 25, 3)) RGB uint8 from ``lfw_subset``: the
    second half of each for evaluation, the first half for samples (calibration)."""
    grey = np.clip(_skimage_data().lfw_subset() * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    half = slice(50, 100) if evaluation else slice(0, 50)
    return rgb[:100][half], rgb[100:][half]


def mosaic(seed: int, evaluation: bool) -> np.ndarray:
    """One canvas with LFW faces (and non-face crops) upscaled at seeded places and sizes."""
    import cv2

    rng = np.random.default_rng(seed)
    faces, others = lfw_crops(evaluation)
    base = rng.normal(120, 25, (MOSAIC_HEIGHT // 8, MOSAIC_WIDTH // 8, 3)).clip(0, 255).astype(np.float32)
    canvas = cv2.resize(base, (MOSAIC_WIDTH, MOSAIC_HEIGHT), interpolation=cv2.INTER_CUBIC)
    taken: list[tuple[int, int, int]] = []
    crops = [(faces[j], True) for j in rng.choice(len(faces), MOSAIC_FACES, replace=False)]
    crops += [(others[j], False) for j in rng.choice(len(others), MOSAIC_DISTRACTORS, replace=False)]
    for crop, _ in crops:
        for _attempt in range(50):
            side = int(rng.integers(*FACE_SIDES))
            x, y = int(rng.integers(0, MOSAIC_WIDTH - side)), int(rng.integers(0, MOSAIC_HEIGHT - side))
            if all(x + side <= ox or ox + os <= x or y + side <= oy or oy + os <= y for ox, oy, os in taken):
                taken.append((x, y, side))
                canvas[y:y + side, x:x + side] = cv2.resize(crop.astype(np.float32), (side, side),
                                                            interpolation=cv2.INTER_CUBIC)
                break
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def photographs(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """``count`` RGB uint8 evaluation photographs: astronaut, camera, then LFW mosaics from ``seed``."""
    data = _skimage_data()
    fixed = [("astronaut", data.astronaut()), ("camera", np.repeat(data.camera()[..., None], 3, axis=-1))]
    items = fixed[:count]
    items += [(f"lfw_mosaic_{seed}_{i}", mosaic(seed * 1000 + i, True))
              for i in range(count - len(items))]
    return [(name, np.ascontiguousarray(image)) for name, image in items]


def sample_images(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """The family's samples (``batchforge samples mtcnn``; the main job's run and calibration
    sets): LFW mosaics from ``seed`` alternating with single LFW crops (faces and non-faces,
    upscaled to 72x72), all from the first half of ``lfw_subset``. The astronaut, the cameraman
    and the second half are the evaluation's, so INT8 is never calibrated on a face it is judged on."""
    import cv2

    faces, others = lfw_crops(evaluation=False)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        if i % 3 == 0:
            items.append((f"lfw_mosaic_{seed}_{i}", mosaic(seed * 1000 + i, False)))
            continue
        pool, kind = (faces, "face") if i % 3 == 1 else (others, "other")
        j = int(rng.integers(len(pool)))
        crop = cv2.resize(pool[j].astype(np.float32), (72, 72), interpolation=cv2.INTER_CUBIC)
        items.append((f"lfw_{kind}_{seed}_{i}_{j}", np.clip(crop + 0.5, 0, 255).astype(np.uint8)))
    return items


def stage_inputs(stage: str, count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Real inputs of one MTCNN network: P-Net gets photographs area-resized to its opt size
    (a pyramid level), R-Net/O-Net get face and non-face LFW crops (evaluation's half) resized
    to 24/48."""
    if stage == "pnet":
        side = 240
        return [(name, np.clip(post.resize_area(image, side, side) + 0.5, 0, 255).astype(np.uint8))
                for name, image in photographs(count, seed)]
    size = post.RNET_SIZE if stage == "rnet" else post.ONET_SIZE
    faces, others = lfw_crops(evaluation=True)
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(faces) + len(others))[:count]
    both = np.concatenate([faces, others])
    return [(f"lfw_{'face' if j < len(faces) else 'other'}_{j}",
             np.clip(post.resize_area(both[j], size, size) + 0.5, 0, 255).astype(np.uint8)) for j in picks]
