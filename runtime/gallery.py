"""A re-identification gallery: labelled, L2-normalised embeddings in an ``.npz`` file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batchforge.errors import ArtifactError, InputValidationError
from batchforge.runtime.artifacts import atomic_path
from batchforge.runtime.post.common import l2_normalize


@dataclass(frozen=True)
class Gallery:
    """``embeddings`` (N, D) float32 unit vectors, one ``label`` each, made by ``model``."""

    embeddings: np.ndarray
    labels: tuple[str, ...]
    model: str

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.labels):
            raise InputValidationError(
                f"gallery needs (N, D) embeddings and N labels, got {self.embeddings.shape} and "
                f"{len(self.labels)} labels"
            )
        if self.embeddings.dtype != np.float32:
            raise InputValidationError(f"gallery embeddings must be float32, got {self.embeddings.dtype}")
        finite = np.isfinite(self.embeddings).all(axis=1)
        if not finite.all():
            bad = [self.labels[i] for i in np.flatnonzero(~finite)[:5]]
            raise InputValidationError(
                f"gallery embeddings must be finite; {int((~finite).sum())} of {len(self.labels)} hold NaN "
                f"or inf (labels {', '.join(map(repr, bad))})", hint="no gallery was written; check those "
                "images and the engine with `batchforge parity`")

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, labels: list[str], model: str) -> Gallery:
        return cls(l2_normalize(embeddings.astype(np.float32)), tuple(labels), model)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the gallery atomically (no pickled objects inside)."""
        with atomic_path(path, suffix=".npz") as tmp:  # np.savez appends .npz to other names
            np.savez(tmp, embeddings=self.embeddings, labels=np.asarray(self.labels, dtype=str),
                     model=np.asarray(self.model))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model: str, dim: int | None = None) -> Gallery:
        """Loads a gallery made by ``model`` (and, if given, with ``dim``-wide embeddings)."""
        path = Path(path)
        hint = f"create it with `batchforge gallery {model} --input DIR --output {path}`"
        if not path.is_file():
            raise ArtifactError(f"gallery not found: {path}", hint=hint)
        try:
            with np.load(path, allow_pickle=False) as data:
                embeddings, labels, made_by = data["embeddings"], data["labels"], str(data["model"])
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path} is not a batchforge gallery: {exc}", hint=hint) from None
        if made_by != model:
            raise InputValidationError(
                f"gallery {path} was made by {made_by!r}, expected {model!r}", hint=hint
            )
        if embeddings.ndim != 2 or (dim is not None and embeddings.shape[1] != dim):
            raise InputValidationError(
                f"gallery {path} holds embeddings of shape {embeddings.shape}, expected (N, {dim})",
                hint=hint,
            )
        return cls(embeddings.astype(np.float32, copy=False), tuple(str(x) for x in labels), model)
