"""External data of an ONNX file, found and checked before ONNX Runtime, onnx or TensorRT read it.

The runtime may not import onnx, so the file is read as protobuf wire format: every TensorProto
(graph and subgraph initializers, sparse initializers, Constant/attribute tensors, functions,
training graphs) is visited and its ``external_data`` ``location`` collected, skipping over
the tensors' raw bytes without copying them. tests/hostile checks the result against
``onnx.external_data_helper`` on the same files.

A location must be relative, stay inside the model's folder, not pass through a link, and name
an existing file.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
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


class _Malformed(ValueError):
    pass


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


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field; other wire types skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
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


def _tensor_location(buf: memoryview, start: int, end: int) -> tuple[str, str] | None:
    name, location = "", None
    for field, s, e in _fields(buf, start, end):
        if field == _TENSOR_NAME:
            name = _text(buf, s, e)
        elif field == _TENSOR_EXTERNAL:
            entry = {f: _text(buf, a, b) for f, a, b in _fields(buf, s, e)}
            if entry.get(1) == "location":
                location = entry.get(2, "")
    return None if location is None else (name, location)


def _walk(buf: memoryview, start: int, end: int, kind: str, depth: int) -> Iterator[tuple[str, str]]:
    if depth > _MAX_DEPTH:
        raise _Malformed(f"subgraphs nested deeper than {_MAX_DEPTH}")
    schema = _SCHEMAS[kind]
    for field, s, e in _fields(buf, start, end):
        child = schema.get(field)
        if child == "tensor":
            found = _tensor_location(buf, s, e)
            if found is not None:
                yield found
        elif child is not None:
            yield from _walk(buf, s, e, child, depth + 1)


def _locations(data: bytes | mmap.mmap, what: str) -> list[tuple[str, str]]:
    view = memoryview(data)
    try:
        return list(_walk(view, 0, len(view), "model", 0))
    except _Malformed as exc:
        raise ArtifactError(f"{what} is not an ONNX model (its protobuf does not parse: {exc})",
                            hint="re-create it with the command that made it") from None
    finally:
        view.release()


def external_locations(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor of an ONNX file that keeps its data outside it.

    Raises:
        ArtifactError when the file cannot be read or is not a protobuf message.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise ArtifactError(f"{path} is empty (0 bytes), not an ONNX model",
                                    hint="re-create it with the command that made it")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return _locations(mapped, str(path))
    except OSError as exc:
        raise ArtifactError(f"cannot read ONNX file {path}: {exc.strerror}") from None


def check_no_external_data(model: bytes) -> None:
    """A model given as bytes has no folder, so ONNX Runtime would resolve its external data
    against the working directory: refused (ArtifactError naming the tensor)."""
    found = _locations(model, "the model bytes")
    if found:
        tensor, location = found[0]
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
    if must_exist and not current.is_file():
        return "names no file in the model folder"
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
    for tensor, location in external_locations(path):
        problem = location_problem(model_dir, location)
        if problem:
            raise ArtifactError(
                f"{path.name}: tensor {tensor!r} keeps its data at {location!r}, which {problem}; "
                "refusing to load it",
                hint=f"external data must be a file inside {model_dir}, named relative to it")
        locations.add(location)
    return sorted(locations)
