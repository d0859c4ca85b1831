"""Loading and saving weights: safetensors preferred, ``torch.load`` only with weights_only."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

from batchforge.errors import ArtifactError, IntegrityError, UsageError, storage_error
from batchforge.runtime.artifacts import atomic_path, sha256_file

# safetensors refuses headers above 100 MB itself, after reading them; checked here before
SAFETENSORS_MAX_HEADER = 100_000_000
SAFETENSORS_HINT = "re-save it with safetensors.torch.save_file(model.state_dict(), path)"


def check_safetensors(path: Path) -> None:
    """The header of a .safetensors file checked against the file's size before anything reads
    it whole: an 8-byte length within the file and the limit, a JSON object whose tensors'
    data offsets lie inside the data section.

    Raises:
        UsageError naming the file and what is wrong.
    """
    size = path.stat().st_size

    def bad(what: str) -> UsageError:
        return UsageError(f"{path} is not a valid safetensors file: {what}", hint=SAFETENSORS_HINT)

    if size < 8:
        raise bad(f"expected at least an 8-byte header length, got a {size}-byte file")
    with open(path, "rb") as fh:
        length = struct.unpack("<Q", fh.read(8))[0]
        if length > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise bad(f"the header claims {length:,} bytes but the file holds {size - 8:,} after the "
                      f"length (limit {SAFETENSORS_MAX_HEADER:,})")
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad(f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad(f"the header is not a JSON object, got {type(header).__name__}")
    data_size = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise bad(f"tensor {name!r} has data offsets {offsets!r} outside the {data_size:,}-byte data section")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Reads a state dict from ``.safetensors`` or a torch file (weights_only=True).

    A torch file may hold the state dict itself or nest it under ``state_dict`` or ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        check_safetensors(path)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
            raise UsageError(f"{path} is not a readable safetensors file: {exc}", hint=SAFETENSORS_HINT) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled code: say so plainly
        raise UsageError(
            f"{path} could not be loaded with torch.load(weights_only=True): {_unpickling_reason(exc)}",
            hint="save a plain state_dict (or convert it to .safetensors); batchforge never unpickles "
                 "code, so it does not retry with weights_only=False",
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UsageError(f"{path} does not hold a state dict of tensors")
    return dict(data)


# torch's own advice ("Re-running `torch.load` with `weights_only` set to `False` will likely
# succeed", "add_safe_globals([...])") is what a hostile file wants its reader to do: only the
# refusal itself is relayed
_TORCH_REFUSAL = re.compile(r"(?:WeightsUnpickler error: )?(?:Unsupported global|Trying to load unsupported)[^\n]*",
                            re.IGNORECASE)
_TORCH_ADVICE = ("weights_only", "In PyTorch 2.6", "Check the documentation", "trust", "Please use")


def _unpickling_reason(exc: Exception) -> str:
    """What torch.load refused, without its advice to load the file unsafely."""
    found = _TORCH_REFUSAL.search(str(exc))
    if found:
        sentences = re.split(r"(?<=\.) ", found.group(0).strip())
        return " ".join(s for s in sentences if not any(a in s for a in _TORCH_ADVICE))[:300]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not any(advice in line for advice in _TORCH_ADVICE)]
    return " ".join(kept)[:300] or type(exc).__name__


def load_weights(module: torch.nn.Module, path: str | os.PathLike[str],
                 expected_sha256: str | None = None) -> None:
    """Loads weights into ``module`` strictly; a recorded sha256 must match first."""
    path = Path(path)
    if expected_sha256 is not None:
        if not path.is_file():
            raise ArtifactError(f"reference weights not found: {path}")
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise IntegrityError(
                f"{path} does not match its export record: sha256 expected "
                f"{expected_sha256[:16]}..., got {actual[:16]}...")
    state = read_state_dict(path)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = " ".join(str(exc).split())[:300]
        raise UsageError(f"weights in {path} do not fit the model: {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        raise UsageError(
            f"weights in {path} do not fit the model: missing [{head(result.missing_keys)}], "
            f"unexpected [{head(result.unexpected_keys)}]"
        )


def save_weights(module: torch.nn.Module, path: str | os.PathLike[str]) -> str:
    """Saves the module's state dict as safetensors (atomic); returns its sha256.

    Raises:
        StorageError naming ``path`` and the errno when it cannot be written (a full disk).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    try:
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
    except OSError as exc:  # named by the file it makes, not by its hidden temporary
        raise storage_error(OSError(exc.errno, exc.strerror or str(exc), str(path))) from None
    except SafetensorError as exc:  # its I/O errors are no OSErrors: "I/O error: ... (os error 28)"
        code = re.search(r"\b(?:os error|code:) (\d+)", str(exc))
        if code is None:
            raise ArtifactError(f"could not write {path}: {exc}") from None
        raise storage_error(OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path))) from None
    return sha256_file(path)


def state_dict_sha256(module: torch.nn.Module) -> str:
    """A sha256 of the weights a module holds, whatever file (if any) they came from.

    The state dict's tensors in name order, each as ``name``, ``dtype`` (``torch.float32``) and
    shape (``3,8,3,3``; empty for a scalar), each followed by a NUL byte, then its raw bytes
    (C order, CPU): the same weights give the same hash however the module was built.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):  # a module's extra state: not weights
            continue
        value = tensor.detach().cpu()
        header = [name, str(value.dtype), ",".join(map(str, value.shape))]
        digest.update(b"".join(part.encode() + b"\0" for part in header))
        # a fresh 1-D copy: .contiguous() keeps a size-1 dim's stride of 0 (an expanded or
        # broadcast buffer, e.g. onnx2torch's), which .view(torch.uint8) refuses
        flat = torch.empty(value.numel(), dtype=value.dtype).copy_(value.reshape(-1))
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
