"""The artifact folder of one model, and the integrity checks done before anything is loaded.

Layout of ``<output-dir>/<MODEL>/``::

    model.fp32.onnx + export.json          batchforge export
    model.fp16.onnx + convert.fp16.json    batchforge convert --precision fp16
    model.int8.onnx + calibration.json     batchforge calibrate
    engine.P.plan + engine.P.json          batchforge build --backend tensorrt
    engine.P.ort.onnx + engine.P.ort.json  batchforge build --backend onnxruntime
    reference.safetensors                  the exact weights that were exported (parity)

Every ONNX file has a sidecar JSON recording its sha256 (and the sha256 of any external data
file, each of which must sit inside the model folder). The runtime refuses a file whose hash
does not match, and an FP16/INT8 file derived from an FP32 export that has since changed.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchforge.errors import ArtifactError, ConfigError, IntegrityError
from batchforge.onnx_external import check_model_size, checked_external_files, location_problem
from batchforge.runtime.spec import ModelSpec
from batchforge.safe_paths import check_name, inside

DEFAULT_OUTPUT_DIR = "artifacts"


class Precision(str, enum.Enum):
    """The precision ladder. FP32 ONNX is the source; FP16 and INT8 are derived from it."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @classmethod
    def parse_list(cls, text: str) -> list[Precision]:
        """Parses ``"fp32,fp16"``; unknown names raise ConfigError naming the known ones."""
        out = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            try:
                out.append(cls(part))
            except ValueError:
                known = ", ".join(p.value for p in cls)
                raise ConfigError(f"unknown precision {part!r}; expected one of: {known}") from None
        if not out:
            raise ConfigError("no precision given; expected e.g. fp32 or fp32,fp16,int8")
        return out


SIDECAR_NAMES = {
    Precision.FP32: "export.json",
    Precision.FP16: "convert.fp16.json",
    Precision.INT8: "calibration.json",
}

MAKE_COMMANDS = {
    Precision.FP32: "batchforge export {model}",
    Precision.FP16: "batchforge convert {model} --precision fp16",
    Precision.INT8: "batchforge calibrate {model} --data samples/{model}",
}


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def umask_file_mode() -> int:
    """0666 less the process umask: the mode any new file of the user's gets."""
    try:  # Linux >= 4.7 reports it without changing it (os.umask would, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A temp path in ``path``'s folder to write to; renamed onto ``path`` (mode 0666 less the
    umask) when the block ends cleanly, removed otherwise, so ``path`` is complete or absent."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, umask_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Writes JSON through ``atomic_path``: complete or absent."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str], *, what: str, hint: str | None = None) -> dict[str, Any]:
    """Reads a JSON object; a missing or malformed file raises ArtifactError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found: expected {path}", hint=hint)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # also non-UTF-8, deep nesting, a 5000-digit integer
        raise ArtifactError(f"{what} {path} is not valid JSON: {exc}", hint=hint) from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def file_record(path: Path, model_dir: Path) -> dict[str, Any]:
    """The sidecar entry for an ONNX file: its name, sha256 and the sha256 of every external data
    file it references, whatever its name (each location checked first)."""
    if Path(path).parent.resolve() != Path(model_dir).resolve():
        raise ArtifactError(f"{path} is not in its model folder {model_dir}")
    data_files = checked_external_files(path)
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "external_data": {name: sha256_file(model_dir / name) for name in data_files},
    }


@dataclass(frozen=True)
class ModelArtifacts:
    """Paths and checks for one model's artifact folder."""

    root: Path
    model: str

    def __post_init__(self) -> None:
        check_name(self.model)  # the folder name under the output dir: never a path

    @classmethod
    def at(cls, output_dir: str | os.PathLike[str], model: str) -> ModelArtifacts:
        return cls(Path(output_dir), model)

    @property
    def dir(self) -> Path:
        return self.root / self.model

    def check_writable_dir(self) -> None:
        """For commands that write into the model folder: it must resolve inside the output
        folder (a link there could lead anywhere). Raises UsageError naming both."""
        inside(self.root, self.dir, "into the model folder")

    def onnx(self, precision: Precision) -> Path:
        return self.dir / f"model.{Precision(precision).value}.onnx"

    @property
    def cpu_int8_onnx(self) -> Path:
        """The INT8 form ONNX Runtime's CPU kernels fuse (``calibrate`` writes it beside the
        TensorRT Q/DQ model, recorded in calibration.json under ``cpu_onnx``)."""
        return self.dir / "model.int8.cpu.onnx"

    def sidecar(self, precision: Precision) -> Path:
        return self.dir / SIDECAR_NAMES[Precision(precision)]

    def plan(self, precision: Precision) -> Path:
        return self.dir / f"engine.{Precision(precision).value}.plan"

    def plan_manifest(self, precision: Precision) -> Path:
        return self.dir / f"engine.{Precision(precision).value}.json"

    def ort_engine(self, precision: Precision) -> Path:
        return self.dir / f"engine.{Precision(precision).value}.ort.onnx"

    def ort_manifest(self, precision: Precision) -> Path:
        return self.dir / f"engine.{Precision(precision).value}.ort.json"

    @property
    def export_record_path(self) -> Path:
        return self.sidecar(Precision.FP32)

    @property
    def reference_weights(self) -> Path:
        return self.dir / "reference.safetensors"

    def make_hint(self, precision: Precision) -> str:
        return "create it with `" + MAKE_COMMANDS[Precision(precision)].format(model=self.model) + "`"

    def export_record(self) -> dict[str, Any]:
        """The parsed ``export.json`` (missing -> ArtifactError with the export command)."""
        return read_json(
            self.export_record_path,
            what=f"export record for {self.model!r}",
            hint=self.make_hint(Precision.FP32),
        )

    def spec(self) -> ModelSpec:
        """The model spec recorded at export time."""
        record = self.export_record()
        if "spec" not in record:
            raise ArtifactError(
                f"{self.export_record_path} has no 'spec' entry",
                hint=f"re-export with `batchforge export {self.model}`",
            )
        return ModelSpec.from_dict(record["spec"])

    def verified_onnx(self, precision: Precision) -> Path:
        """Returns the ONNX path for ``precision`` after its integrity checks.

        Checks: the file and sidecar exist; the sha256 of the ONNX and of each external data
        file match the sidecar; every external data location the ONNX names is a file inside
        the model folder (no absolute path, '..' or link) and is recorded; an FP16/INT8 model
        was derived from the FP32 export that is there now.
        """
        precision = Precision(precision)
        path = self.onnx(precision)
        hint = self.make_hint(precision)
        if not path.is_file():
            raise ArtifactError(f"{precision.value} ONNX for {self.model!r} not found: {path}", hint=hint)
        sidecar = read_json(self.sidecar(precision), what=f"{precision.value} record", hint=hint)
        self._check_file_record(sidecar.get("onnx"), path, hint)
        if precision is not Precision.FP32:
            export = self.export_record()
            source = sidecar.get("source_sha256")
            current = (export.get("onnx") or {}).get("sha256")
            if source != current:
                raise IntegrityError(
                    f"{path.name} was made from an FP32 export (sha256 {str(source)[:12]}) that "
                    f"is no longer the current one ({str(current)[:12]})",
                    hint=hint,
                )
        return path

    def verified_cpu_int8(self) -> tuple[Path, str] | None:
        """The CPU INT8 artifact and its target ("vnni" or "no-vnni") after the same checks as
        ``verified_onnx``; None when the calibration predates it (no ``cpu_onnx`` record)."""
        self.verified_onnx(Precision.INT8)  # the record, and the FP32 export it was made from
        record = read_json(self.sidecar(Precision.INT8), what="int8 record")
        if "cpu_onnx" not in record:
            return None
        hint = self.make_hint(Precision.INT8)
        path = self.cpu_int8_onnx
        if not path.is_file():
            raise ArtifactError(f"int8 CPU ONNX for {self.model!r} not found: {path}", hint=hint)
        self._check_file_record(record["cpu_onnx"], path, hint)
        target = (record.get("cpu") or {}).get("target") if isinstance(record.get("cpu"), Mapping) else None
        if target not in ("vnni", "no-vnni"):
            raise ArtifactError(f"{self.sidecar(Precision.INT8)} records no CPU target ('vnni' or 'no-vnni') "
                                f"for {path.name}, got {target!r}", hint=hint)
        return path, str(target)

    def _check_file_record(self, record: Any, path: Path, hint: str) -> None:
        if not isinstance(record, Mapping) or not isinstance(record.get("sha256"), str):
            given = record.get("sha256") if isinstance(record, Mapping) else record
            raise ArtifactError(f"the record beside {path} has no sha256 for it (expected an object with a "
                                f"sha256 string, got {type(given).__name__} {given!r:.40})", hint=hint)
        check_model_size(path)  # a multi-GB (sparse) file is refused before it is hashed
        actual = sha256_file(path)
        if actual != record["sha256"]:
            raise IntegrityError(
                f"{path} does not match its record: sha256 expected {record['sha256'][:16]}..., "
                f"got {actual[:16]}...",
                hint=f"the file changed after it was written; {hint}",
            )
        recorded = record.get("external_data") or {}
        if not isinstance(recorded, Mapping) or not all(isinstance(v, str) for v in recorded.values()):
            raise ArtifactError(f"the record beside {path} has external_data {recorded!r:.60}; expected an "
                                "object of file name -> sha256", hint=hint)
        unrecorded = sorted(set(checked_external_files(path)) - set(recorded))
        if unrecorded:
            raise IntegrityError(
                f"{path.name} references external data {unrecorded} that its record does not hash",
                hint=f"every external file must be recorded; {hint}",
            )
        for name, digest in recorded.items():
            problem = location_problem(self.dir, str(name), must_exist=False)  # missing: below
            if problem:
                raise IntegrityError(f"external data {name!r} recorded for {path.name} {problem}", hint=hint)
            data_path = self.dir / name
            if not data_path.is_file() or sha256_file(data_path) != digest:
                raise IntegrityError(
                    f"external data {name!r} of {path.name} is missing or does not match its "
                    "recorded sha256",
                    hint=hint,
                )
