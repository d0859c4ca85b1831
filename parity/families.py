"""Imports every family's parity module so each registers itself with the gate."""

from batchforge.parity import reid  # noqa: F401
