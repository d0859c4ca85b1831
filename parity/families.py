"""Imports every family's parity module so each registers itself with the gate."""

from batchforge.parity import (
    anomaly,  # noqa: F401
    detection,  # noqa: F401
    keypoints,  # noqa: F401
    ptycho,  # noqa: F401
    reid,  # noqa: F401
)
