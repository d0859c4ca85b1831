"""Small records shared by the engine builders: atomic plan writes, calibration hash, tolerances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchforge.errors import BuildError, ConfigError
from batchforge.runtime.artifacts import ModelArtifacts, Precision, atomic_path, read_json
from batchforge.tolerances import limits_for


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Writes through ``atomic_path``: complete or absent."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def calibration_sha256(artifacts: ModelArtifacts, precision: Precision) -> str | None:
    """The calibration set's sha256 for an INT8 build (``calibration.json["data"]["sha256"]``)."""
    if precision is not Precision.INT8:
        return None
    record = read_json(artifacts.sidecar(Precision.INT8), what="calibration record",
                       hint=artifacts.make_hint(Precision.INT8))
    data = record.get("data")
    digest = data.get("sha256") if isinstance(data, dict) else None  # a record from elsewhere may hold anything
    if not isinstance(digest, str):
        raise BuildError(f"{artifacts.sidecar(Precision.INT8)} records no calibration data sha256",
                         hint=artifacts.make_hint(Precision.INT8))
    return digest


def tolerances_for(family: str, precision: Precision) -> dict[str, Any] | None:
    """The parity limits the engine is held to; None for a family the table does not know
    (informative only: a manifest without tolerances is still valid)."""
    try:
        limits = limits_for(family, precision)
    except ConfigError:
        return None
    return {k: {"value": v.value, "kind": v.kind} for k, v in limits.items()}
