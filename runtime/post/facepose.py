"""Face pose post-processing: local pose outputs -> 6DoF pose, 68 projected landmarks, pose box.

The facepose model adds a ``pose`` output (N, 6) to the dense detector outputs: per anchor, a
rotation vector (rx, ry, rz, radians) and a local translation code (dx, dy, log_size). Like
img2pose, the local code is turned into a global pose with the intrinsics of the ORIGINAL
image (so the pose does not depend on the letterbox):

- camera: focal length ``f = focal_scale * sqrt(W^2 + H^2)`` pixels (the image diagonal,
  img2pose's convention), principal point at the image centre ``(W / 2, H / 2)``;
- face centre in input pixels ``(ax + dx * s, ay + dy * s)`` for the anchor (ax, ay) of stride
  s, mapped to original pixels (u, v); apparent face width ``s * exp(log_size)`` input pixels,
  divided by the letterbox scale;
- ``tz = f * reference_width / apparent_width``, ``tx = (u - cx) * tz / f``,
  ``ty = (v - cy) * tz / f`` (metres, camera frame: x right, y down, z forward).

Landmarks are the 68 reference points (``runtime/data/face_reference_68.npy``, made by
``scripts/make_face_reference.py``) rotated by ``R = exp([r]x)`` (Rodrigues), translated and
projected with the pinhole camera; depths are clamped to at least ``MIN_DEPTH`` so no face
projects to infinity. The pose box is the tight box around the 68 landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from batchforge.errors import ArtifactError, ConfigError
from batchforge.runtime.post.detection import DetectionOptions
from batchforge.runtime.preprocess import Geometry

REFERENCE_PATH = Path(__file__).resolve().parents[1] / "data" / "face_reference_68.npy"
MIN_DEPTH = 1e-3  # metres
LOG_SIZE_LIMIT = 20.0  # |log_size| is clipped here so exp() stays finite


@dataclass(frozen=True)
class FacePoseOptions(DetectionOptions):
    """Detection options plus the camera's ``focal_scale`` (1.0 = img2pose's image diagonal)."""

    class_names: tuple[str, ...] = ("face",)
    focal_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.focal_scale, (int, float)) or not self.focal_scale > 0:
            raise ConfigError(f"invalid facepose options: focal_scale must be > 0, got {self.focal_scale!r}")


@lru_cache(maxsize=1)
def face_reference() -> np.ndarray:
    """The (68, 3) reference points in metres (read-only)."""
    if not REFERENCE_PATH.is_file():
        raise ArtifactError(f"face reference not found: expected {REFERENCE_PATH}",
                            hint="regenerate it with `python scripts/make_face_reference.py`")
    points = np.load(REFERENCE_PATH, allow_pickle=False).astype(np.float64)
    if points.shape != (68, 3):
        raise ArtifactError(f"{REFERENCE_PATH} must hold (68, 3) points, got {points.shape}")
    points.setflags(write=False)
    return points


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in original-image pixels."""

    focal: float
    cx: float
    cy: float

    @classmethod
    def for_image(cls, height: int, width: int, focal_scale: float = 1.0) -> Camera:
        """img2pose's camera for an image: focal = focal_scale * diagonal, centre principal point."""
        return cls(focal_scale * float(np.hypot(width, height)), width / 2.0, height / 2.0)


def rotation_matrices(rvecs: np.ndarray) -> np.ndarray:
    """(K, 3) rotation vectors -> (K, 3, 3) matrices (Rodrigues' formula, float64)."""
    r = np.asarray(rvecs, np.float64)
    theta = np.linalg.norm(r, axis=1)
    small = theta < 1e-8
    safe = np.where(small, 1.0, theta)
    # sin(t)/t and (1 - cos(t))/t^2 with their Taylor limits at t -> 0
    a = np.where(small, 1.0 - theta**2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    k = np.zeros((len(r), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -r[:, 2], r[:, 1], -r[:, 0]
    k[:, 1, 0], k[:, 2, 0], k[:, 2, 1] = r[:, 2], -r[:, 1], r[:, 0]
    return np.eye(3) + a[:, None, None] * k + b[:, None, None] * (k @ k)


def decode_poses(raw: np.ndarray, points: np.ndarray, strides: np.ndarray, geometry: Geometry,
                 camera: Camera, reference_width: float) -> np.ndarray:
    """Local pose codes of detections -> global poses (K, 6): rx, ry, rz, tx, ty, tz.

    Args:
        raw: (K, 6) pose outputs of the detections' anchors.
        points, strides: the detections' anchor points (K, 2) and strides (K,).
        geometry: the image's letterbox geometry.
        camera: the image's camera (``Camera.for_image``).
        reference_width: x extent of the 3D reference, metres.
    """
    raw = np.asarray(raw, np.float64)
    s = np.asarray(strides, np.float64)[:, None]
    centre = geometry.to_original(np.asarray(points, np.float64) + raw[:, 3:5] * s)
    width_px = s[:, 0] * np.exp(np.clip(raw[:, 5], -LOG_SIZE_LIMIT, LOG_SIZE_LIMIT)) / geometry.scale_x
    tz = camera.focal * reference_width / width_px
    tx = (centre[:, 0] - camera.cx) * tz / camera.focal
    ty = (centre[:, 1] - camera.cy) * tz / camera.focal
    return np.concatenate([raw[:, :3], np.stack([tx, ty, tz], axis=1)], axis=1)


def project_landmarks(poses: np.ndarray, reference: np.ndarray, camera: Camera) -> np.ndarray:
    """Projects the reference through each pose: (K, 6) -> (K, 68, 2) original pixels."""
    poses = np.asarray(poses, np.float64)
    cam = np.einsum("kij,nj->kni", rotation_matrices(poses[:, :3]), reference) + poses[:, None, 3:]
    depth = np.maximum(cam[:, :, 2], MIN_DEPTH)
    return np.stack([camera.focal * cam[:, :, 0] / depth + camera.cx,
                     camera.focal * cam[:, :, 1] / depth + camera.cy], axis=2)


def landmark_boxes(landmarks: np.ndarray) -> np.ndarray:
    """The tight xyxy box around each face's landmarks: (K, 68, 2) -> (K, 4)."""
    if not len(landmarks):
        return np.zeros((0, 4))
    return np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1)
