"""Synthetic "animal" images with known AP-10K joints, for pose (keypoints) models.

A quadruped is drawn side-on with OpenCV: an elliptical body between neck and tail root, a head
with eyes and nose, a tail, and four two-segment legs (the far-side legs darker), over a
textured background. Every pose, size, colour and facing direction is seeded, and the 17 joint
positions are returned with the image so an initialisation can be fitted on them.
"""

from __future__ import annotations

import cv2
import numpy as np

AP10K_KEYPOINTS = (
    "left_eye", "right_eye", "nose", "neck", "root_of_tail",
    "left_shoulder", "left_elbow", "left_front_paw",
    "right_shoulder", "right_elbow", "right_front_paw",
    "left_hip", "left_knee", "left_back_paw",
    "right_hip", "right_knee", "right_back_paw",
)
SIZES = ((256, 256), (240, 320), (300, 220), (224, 288))  # (H, W): exercise the letterbox
# (upper joint, middle joint, paw) of each leg; the right legs are drawn first (far side)
LEGS = ((8, 9, 10), (14, 15, 16), (5, 6, 7), (11, 12, 13))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    top, bottom = rng.integers(40, 220, 3), rng.integers(40, 220, 3)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    canvas = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1), np.float32)
    noise = cv2.resize(rng.normal(0, 18, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32),
                       (width, height), interpolation=cv2.INTER_CUBIC)
    return canvas + noise


def animal_joints(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(17, 2) float64 joint positions (x, y) of a random side-on quadruped pose."""
    facing = 1.0 if rng.random() < 0.5 else -1.0  # +1: head on the right
    scale = float(rng.uniform(0.55, 0.8)) * min(height, width)
    length = scale * float(rng.uniform(0.45, 0.6))
    tilt = float(rng.uniform(-0.25, 0.25))
    centre = np.array([width / 2 + rng.uniform(-0.1, 0.1) * width,
                       height / 2 - 0.12 * scale + rng.uniform(-0.05, 0.05) * height])
    axis = np.array([np.cos(tilt), np.sin(tilt)]) * facing
    down = np.array([-axis[1], axis[0]]) * facing  # perpendicular pointing "down"
    joints = np.zeros((17, 2))
    joints[3] = centre + axis * length / 2 - down * 0.1 * scale  # neck
    joints[4] = centre - axis * length / 2  # root of tail
    head = joints[3] + axis * 0.16 * scale - down * 0.12 * scale
    joints[2] = head + axis * 0.12 * scale + down * 0.04 * scale  # nose
    joints[0] = head + axis * 0.03 * scale - down * 0.03 * scale  # left eye (near side)
    joints[1] = head + axis * 0.06 * scale - down * 0.05 * scale  # right eye
    joints[5] = joints[8] = centre + axis * length * 0.4 + down * 0.1 * scale  # shoulders
    joints[11] = joints[14] = centre - axis * length * 0.4 + down * 0.1 * scale  # hips
    joints[8] += axis * 0.04 * scale  # far-side joints sit slightly apart
    joints[14] += axis * 0.04 * scale
    leg = 0.2 * scale
    for upper, middle, paw in LEGS:
        swing = rng.uniform(-0.5, 0.5, 2)
        first = np.cos(swing[0]) * down + np.sin(swing[0]) * axis
        second = np.cos(swing[0] + swing[1]) * down + np.sin(swing[0] + swing[1]) * axis
        joints[middle] = joints[upper] + first * leg
        joints[paw] = joints[middle] + second * leg
    return joints


def render_animal(index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its (17, 2) joints (x, y) in continuous pixel coordinates."""
    rng = np.random.default_rng([seed, index])
    height, width = SIZES[index % len(SIZES)]
    canvas = _background(rng, height, width)
    joints = animal_joints(rng, height, width)
    fur = rng.integers(30, 230, 3).astype(np.float32)
    far = tuple(float(c) for c in fur * 0.6)
    near = tuple(float(c) for c in fur)
    thick = max(3, int(0.035 * min(height, width)))
    pts = np.round(joints).astype(np.int32)
    for i, (upper, middle, paw) in enumerate(LEGS):
        colour = far if i < 2 else near
        cv2.line(canvas, tuple(pts[upper]), tuple(pts[middle]), colour, thick, cv2.LINE_AA)
        cv2.line(canvas, tuple(pts[middle]), tuple(pts[paw]), colour, thick, cv2.LINE_AA)
        cv2.circle(canvas, tuple(pts[paw]), thick, (20.0, 20.0, 20.0), -1, cv2.LINE_AA)
    body_centre = (joints[3] + joints[4]) / 2
    body_axes = (int(np.linalg.norm(joints[3] - joints[4]) / 2 + thick), int(2.2 * thick))
    angle = float(np.degrees(np.arctan2(*(joints[3] - joints[4])[::-1])))
    cv2.ellipse(canvas, tuple(np.round(body_centre).astype(int)), body_axes, angle, 0, 360, near, -1,
                cv2.LINE_AA)
    tail_end = joints[4] + (joints[4] - joints[3]) * 0.35 + np.array([0, 0.5 * thick])
    cv2.line(canvas, tuple(pts[4]), tuple(np.round(tail_end).astype(int)), far, thick // 2 + 1,
             cv2.LINE_AA)
    head = np.round((joints[0] + joints[1] + joints[2]) / 3).astype(int)
    cv2.line(canvas, tuple(pts[3]), tuple(head), near, 2 * thick, cv2.LINE_AA)
    cv2.circle(canvas, tuple(head), int(1.6 * thick), near, -1, cv2.LINE_AA)
    cv2.circle(canvas, tuple(pts[2]), max(2, thick // 2), (10.0, 10.0, 10.0), -1, cv2.LINE_AA)
    for eye in (0, 1):
        cv2.circle(canvas, tuple(pts[eye]), max(2, thick // 3), (250.0, 250.0, 240.0), -1, cv2.LINE_AA)
    canvas = canvas + rng.normal(0.0, 3.0, canvas.shape)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8), joints


def sample_images(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """``count`` synthetic animal images (RGB uint8, several sizes)."""
    return [(f"animal{i:04d}", render_animal(i, seed)[0]) for i in range(count)]
