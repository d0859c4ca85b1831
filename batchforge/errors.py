"""One error hierarchy for batchforge; the CLI maps each class to a documented exit code.

Exit codes: 0 success, 1 a check failed (parity, or items that could not be processed),
2 could not run (bad input, missing artifact or backend, incompatible engine).
Every message says what was expected, what was given and, where it helps, what to do.
"""

from __future__ import annotations

import errno as _errno
import os

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_COULD_NOT_RUN = 2


class BatchforgeError(Exception):
    """Base class. ``hint`` is the "what to do" part, printed after the message."""

    exit_code = EXIT_COULD_NOT_RUN

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint as the single line the CLI prints."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(BatchforgeError):
    """Arguments that do not fit together (unknown model, bad option value)."""


class ConfigError(BatchforgeError):
    """A spec, infer config or manifest that does not validate. ``problems`` lists each one."""

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None):
        self.problems = list(problems or [])
        full = message if not self.problems else message + ": " + "; ".join(self.problems)
        super().__init__(full, hint=hint)


class ArtifactError(BatchforgeError):
    """A required artifact is missing or unreadable; the hint names the command that makes it."""


class IntegrityError(ArtifactError):
    """An artifact's sha256 (or its manifest) does not match what was recorded."""


class EngineCompatibilityError(ArtifactError):
    """An engine was built for another GPU, TensorRT version or compatibility level."""


class StorageError(ArtifactError):
    """A file could not be written: a full disk, a quota, a read-only file system."""


WRITE_ERRNOS = (_errno.ENOSPC, _errno.EDQUOT, _errno.EROFS)  # the disk, not the data


def storage_error(exc: OSError, path: str | os.PathLike[str] | None = None) -> StorageError:
    """The one line for an OSError met while writing: the path, the reason and its errno.

    Args:
        exc: the error (its ``filename`` wins over ``path`` when it has one).
        path: what was being written, for errors that name no file (a library's own writer).
    """
    where = exc.filename or path
    code = exc.errno
    name = _errno.errorcode.get(code, "") if code is not None else ""
    reason = exc.strerror or (os.strerror(code) if code is not None else str(exc) or type(exc).__name__)
    errno_text = f" (errno {code}{' ' + name if name else ''})" if code is not None else ""
    hint = ("free space on that file system (or choose another output folder), then run the command again"
            if code in (_errno.ENOSPC, _errno.EDQUOT) else "check the path, its permissions and the free space")
    return StorageError(f"could not write {where or 'a file'}: {reason}{errno_text}", hint=hint)


class ExportError(BatchforgeError):
    """torch -> ONNX export or one of its checks failed."""


class CalibrationError(BatchforgeError):
    """FP16 conversion or INT8 calibration could not be done as asked."""


class BuildError(BatchforgeError):
    """An engine build failed."""


class BackendUnavailableError(BatchforgeError):
    """An explicitly requested backend is not installed or has no usable device."""


class InputValidationError(BatchforgeError, ValueError):
    """An input array or image does not match what the model expects."""


class ParityError(BatchforgeError):
    """Parity could not be computed (distinct from a parity check that ran and failed)."""


class AllocationError(BatchforgeError):
    """An inference batch could not allocate its memory even at batch size 1 (per-item record)."""

    exit_code = 1


class NonFiniteOutputError(BatchforgeError):
    """An engine output (or a value derived from it) is NaN or infinite (per-item record)."""

    exit_code = 1


class InferenceError(BatchforgeError):
    """The engine could not run one item even alone, while other items run (per-item record)."""

    exit_code = 1


class EngineUnhealthyError(BatchforgeError):
    """The engine fails on items that ran before (a sticky error): nothing more runs on it until
    it is activated again."""


class QueueFullError(BatchforgeError):
    """``DynamicBatcher.submit`` found its bounded queue full: back off and retry, or raise max_queue."""

    exit_code = 1


class BatcherClosedError(BatchforgeError):
    """``DynamicBatcher.submit`` after ``close()``."""
