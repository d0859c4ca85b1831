"""External data of an ONNX file, found and checked before ONNX Runtime, onnx or TensorRT read it.

The runtime may not import onnx, so the file is read as protobuf wire format: every TensorProto
(graph and subgraph initializers, sparse initializers, Constant/attribute tensors, functions,
training graphs) is visited and its ``external_data`` ``location`` collected, skipping over
the tensors' raw bytes without copying them. tests/hostile checks the result against
``onnx.external_data_helper`` on the same files.

A location must be relative, stay inside the model's folder, not pass through a link, and name
an existing regular file with one link (a hard link could share the bytes of a file outside the
folder); its ``offset`` + ``length`` must lie within that file.

The reader refuses cheaply what cannot be an ONNX model before walking it (issue #29: a sparse
multi-GB file took minutes per GiB): a file over protobuf's 2 GiB message limit, a field number 0
(which protobuf forbids; runs of zero bytes read as it), or more than ``MAX_FIELDS`` fields outside
tensor data (a real graph's structure is far smaller; tensor bytes are skipped by their length).
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from batchforge.errors import ArtifactError

# field numbers of onnx.proto (onnx/onnx.proto3) that can hold a TensorProto, by message
_MODEL = {7: "graph", 20: "training", 25: "function"}
_TRAINING = {1: "graph", 2: "graph"}
_FUNCTION = {7: "node"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_SCHEMAS = {"model": _MODEL, "training": _TRAINING, "function": _FUNCTION, "graph": _GRAPH,
            "node": _NODE, "attribute": _ATTRIBUTE, "sparse": _SPARSE}
_TENSOR_NAME, _TENSOR_EXTERNAL = 8, 13
_MAX_DEPTH = 64  # subgraph nesting; deeper is not a model anyone exported
# protobuf cannot parse a message over 2 GiB, so neither onnx nor ONNX Runtime can load such a file
MAX_MODEL_BYTES = 2 ** 31 - 1
# fields visited outside tensor data: the reader walks ~1.2 M fields/s (measured on this 2-core
# machine), so this bounds a crafted file to about 8 s; real models are far below it (measured:
# reid_resnet50 fp32, 90 MiB, 4,008 fields; its int8 Q/DQ model 6,200; PP-OCRv4 rec 8,706)
MAX_FIELDS = 10_000_000


class _Malformed(ValueError):
    pass


@dataclass(frozen=True)
class ExternalRef:
    """One tensor's external data entry: where its bytes are and which part of that file."""

    tensor: str
    location: str
    offset: str | None = None
    length: str | None = None


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int, budget: list[int]) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field; other wire types skipped.
    ``budget`` holds the fields still allowed to be read (shared by the whole walk)."""
    pos = start
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Malformed(f"more than {MAX_FIELDS:,} fields outside tensor data")
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed(f"field number 0 at byte {pos - 1}")
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed("field runs past its message")
            yield field, pos, pos + length
            pos += length
        else:
            raise _Malformed(f"wire type {wire}")
        if pos > end:
            raise _Malformed("field runs past its message")


def _text(buf: memoryview, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", errors="replace")


def _tensor_ref(buf: memoryview, start: int, end: int, budget: list[int]) -> ExternalRef | None:
    name, entries = "", {}
    for field, s, e in _fields(buf, start, end, budget):
        if field == _TENSOR_NAME:
            name = _text(buf, s, e)
        elif field == _TENSOR_EXTERNAL:  # StringStringEntryProto: key = 1, value = 2
            entry = {f: _text(buf, a, b) for f, a, b in _fields(buf, s, e, budget)}
            entries[entry.get(1, "")] = entry.get(2, "")
    if "location" not in entries:
        return None
    return ExternalRef(name, entries["location"], entries.get("offset"), entries.get("length"))


def _walk(buf: memoryview, start: int, end: int, kind: str, depth: int,
          budget: list[int]) -> Iterator[ExternalRef]:
    if depth > _MAX_DEPTH:
        raise _Malformed(f"subgraphs nested deeper than {_MAX_DEPTH}")
    schema = _SCHEMAS[kind]
    for field, s, e in _fields(buf, start, end, budget):
        child = schema.get(field)
        if child == "tensor":
            found = _tensor_ref(buf, s, e, budget)
            if found is not None:
                yield found
        elif child is not None:
            yield from _walk(buf, s, e, child, depth + 1, budget)


def _refs(data: bytes | mmap.mmap, what: str) -> list[ExternalRef]:
    view = memoryview(data)
    try:
        return list(_walk(view, 0, len(view), "model", 0, [MAX_FIELDS]))
    except _Malformed as exc:
        raise ArtifactError(f"{what} is not an ONNX model (its protobuf does not parse: {exc})",
                            hint="re-create it with the command that made it") from None
    finally:
        view.release()


def check_model_size(path: Path, size: int | None = None) -> None:
    """Refuses (ArtifactError) an ONNX file over protobuf's 2 GiB limit before anything reads it."""
    size = path.stat().st_size if size is None else size
    if size > MAX_MODEL_BYTES:
        raise ArtifactError(
            f"{path} is {size:,} bytes; an ONNX file must be under 2 GiB ({MAX_MODEL_BYTES:,} bytes, "
            "protobuf's limit), so this is not one onnx or ONNX Runtime can load; refused before reading it",
            hint="save large models with their weights as external data "
                 "(onnx.save(model, path, save_as_external_data=True))")


def external_refs(path: str | os.PathLike[str]) -> list[ExternalRef]:
    """Every external data entry of an ONNX file (tensor, location, offset, length).

    Raises:
        ArtifactError when the file cannot be read, is over protobuf's 2 GiB limit or is not a
        protobuf message (see the module docstring for the cheap checks).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise ArtifactError(f"{path} is empty (0 bytes), not an ONNX model",
                                    hint="re-create it with the command that made it")
            check_model_size(path, size)
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return _refs(mapped, str(path))
    except OSError as exc:
        raise ArtifactError(f"cannot read ONNX file {path}: {exc.strerror}") from None


def external_locations(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor of an ONNX file that keeps its data outside it.

    Raises:
        ArtifactError as ``external_refs``.
    """
    return [(ref.tensor, ref.location) for ref in external_refs(path)]


def check_no_external_data(model: bytes) -> None:
    """A model given as bytes has no folder, so ONNX Runtime would resolve its external data
    against the working directory: refused (ArtifactError naming the tensor)."""
    found = _refs(model, "the model bytes")
    if found:
        tensor, location = found[0].tensor, found[0].location
        raise ArtifactError(
            f"the model bytes keep tensor {tensor!r} at external location {location!r}; a model "
            "given as bytes has no folder to resolve it against, refusing to load it",
            hint="pass the .onnx path instead, with its data files beside it")


def location_problem(model_dir: Path, location: str, *, must_exist: bool = True) -> str | None:
    """Why ``location`` may not be read as external data of a model in ``model_dir``, or None."""
    if not location:
        return "is empty"
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute() \
            or PureWindowsPath(location).drive:
        return "is an absolute path (outside the model folder)"
    parts = PurePosixPath(location.replace("\\", "/")).parts
    if ".." in parts:
        return "climbs outside the model folder ('..')"
    current = model_dir
    for part in parts:
        current = current / part
        if current.is_symlink():
            return f"passes through the link {current.name!r} (a link may lead outside the model folder)"
    root = model_dir.resolve()
    if root not in current.resolve().parents:
        return "resolves outside the model folder"
    try:
        info = os.lstat(current)
    except OSError:
        return "names no file in the model folder" if must_exist else None
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_nlink != 1:
        return (f"is a hard link ({info.st_nlink} names for the same bytes; one may be outside the "
                "model folder)")
    return None


def range_problem(ref: ExternalRef, size: int) -> str | None:
    """Why ``ref``'s offset and length do not lie within its ``size``-byte file, or None."""
    try:
        offset = int(ref.offset or 0)
        length = None if ref.length is None else int(ref.length)
    except ValueError:
        return f"has an offset/length that is not a number (offset {ref.offset!r}, length {ref.length!r})"
    if offset < 0 or (length is not None and length < 0):
        return f"has a negative offset or length (offset {offset}, length {length})"
    end = offset + (length or 0)
    if offset > size or end > size:
        return (f"asks for bytes {offset:,} to {end:,} of a {size:,}-byte file (offset + length runs past "
                "its end)")
    return None


def checked_external_files(path: str | os.PathLike[str]) -> list[str]:
    """The external data files an ONNX file references, each checked (see the module docstring).

    Returns:
        Their locations relative to the model's folder, sorted, each once.
    Raises:
        ArtifactError naming the tensor, its location and the rule it breaks.
    """
    path = Path(path)
    model_dir = path.parent
    locations = set()
    for ref in external_refs(path):
        problem = location_problem(model_dir, ref.location)
        hint = f"external data must be a file inside {model_dir}, named relative to it"
        if problem is None:
            problem = range_problem(ref, os.stat(model_dir / ref.location).st_size)
            hint = "the data file does not hold what the model says; re-create both with the command that made them"
        if problem:
            raise ArtifactError(
                f"{path.name}: tensor {ref.tensor!r} keeps its data at {ref.location!r}, which {problem}; "
                "refusing to load it", hint=hint)
        locations.add(ref.location)
    return sorted(locations)
