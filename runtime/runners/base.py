"""The Runner contract shared by every backend (and by the PyTorch reference runner)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping

import numpy as np

from batchforge.errors import BatchforgeError, EngineUnhealthyError
from batchforge.runtime.spec import ProfileRange
from batchforge.runtime.validation import IOMeta, validate_feed


class Runner(abc.ABC):
    """activate() -> infer(feed) -> deactivate(); also a context manager.

    Subclasses implement ``activate_impl``, ``infer_impl``, ``deactivate_impl`` and
    ``input_metadata_impl``; validation happens here, once, for every backend.

    Thread safety: once active, ``infer`` may be called from many threads at once. ONNX Runtime
    shares one session (``InferenceSession.run`` is thread-safe); TensorRT lends each call an
    execution context (with its stream and buffers) from a bounded pool. ``activate`` and
    ``deactivate`` are not: call them from one thread, outside concurrent ``infer`` calls.

    Health: ``mark_unhealthy(reason)`` (the pipeline's failure isolation calls it on a sticky
    engine error) makes every later ``infer`` raise EngineUnhealthyError at once; ``deactivate``
    clears it, so a fresh ``activate`` starts healthy.
    """

    backend = "abstract"

    def __init__(self, *, name: str, profile: ProfileRange | None = None) -> None:
        self.name = name
        self.profile = profile
        # named dims with ranges (P-Net's height/width): set from the spec by open_runner
        self.dim_ranges: dict[str, dict[int, tuple[str, ProfileRange]]] = {}
        self.is_active = False
        self.unhealthy: str | None = None  # why the engine is unusable (None: healthy)
        self._input_meta: dict[str, IOMeta] | None = None
        # the artifact's integrity checks, run again by every activate (open_runner sets it), so a
        # file replaced after verification or between deactivate() and activate() is refused
        self.reverify: Callable[[], object] | None = None

    def activate(self) -> Runner:
        """Loads the model (idempotent). Returns self."""
        if not self.is_active:
            if self.reverify is not None:
                self.reverify()
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        """Releases the model (idempotent)."""
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False
            self._input_meta = None
        self.unhealthy = None

    def mark_unhealthy(self, reason: str) -> None:
        """Refuses every later ``infer`` with EngineUnhealthyError naming ``reason`` (until deactivated)."""
        self.unhealthy = reason

    def check_healthy(self) -> None:
        """Raises EngineUnhealthyError when the runner was marked unhealthy."""
        if self.unhealthy is not None:
            raise EngineUnhealthyError(f"runner {self.name!r} is unhealthy: {self.unhealthy}",
                                       hint="re-create the pipeline (or deactivate and activate it); "
                                            "check the device with `batchforge doctor`")

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def input_metadata(self) -> dict[str, IOMeta]:
        """Input name -> IOMeta (shape with symbolic dims, numpy dtype)."""
        self._require_active("input_metadata")
        if self._input_meta is None:
            self._input_meta = self.input_metadata_impl()
        return self._input_meta

    @property
    @abc.abstractmethod
    def output_names(self) -> tuple[str, ...]:
        """Output names in model order (valid once active)."""

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validates the feed and runs one batch.

        Args:
            feed: input name -> array whose leading dim is the batch (within the profile).
        Returns:
            Output name -> array.
        Raises:
            InputValidationError for a feed that does not match the model; EngineUnhealthyError
            once the runner was marked unhealthy.
        """
        self._require_active("infer")
        self.check_healthy()
        validate_feed(feed, self.input_metadata(), self.profile, self.dim_ranges)
        return self.infer_impl(dict(feed))

    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise BatchforgeError(
                f"runner {self.name!r} is not active: call activate() (or use `with runner:`) "
                f"before {what}()"
            )

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def deactivate_impl(self) -> None: ...

    @abc.abstractmethod
    def input_metadata_impl(self) -> dict[str, IOMeta]: ...
