"""Re-identification post-processing: L2-normalise, weighted fusion, cosine top-k."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from batchforge.errors import ConfigError, InputValidationError
from batchforge.runtime.post.common import l2_normalize, top_k


@dataclass(frozen=True)
class ReidOptions:
    """Options of the reid family. ``top_k`` matches are reported per query."""

    top_k: int = 5
    include_embedding: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"reid top_k must be an integer >= 1, got {self.top_k!r}")
        if not isinstance(self.include_embedding, bool):
            raise ConfigError(f"reid include_embedding must be true or false, got {self.include_embedding!r}")


def fuse_embeddings(embeddings: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted fusion of member embeddings of different widths.

    Each member is L2-normalised and scaled by sqrt(weight), then concatenated, so that the
    cosine similarity of two fused vectors is the weighted sum of the members' cosine
    similarities (with weights summing to 1 the fused vectors have unit norm).

    Args:
        embeddings: one (N, D_i) array per member.
        weights: one non-negative weight per member, summing to 1.
    Returns:
        (N, sum D_i) float32 fused embeddings.
    """
    if len(embeddings) != len(weights) or not embeddings:
        raise InputValidationError(
            f"fusion needs one weight per member: got {len(embeddings)} embeddings and "
            f"{len(weights)} weights"
        )
    if min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
        raise InputValidationError(f"fusion weights must be >= 0 and sum to 1, got {list(weights)}")
    rows = {e.shape[0] for e in embeddings}
    if len(rows) != 1:
        raise InputValidationError(f"members returned different batch sizes: {sorted(rows)}")
    parts = [np.sqrt(w) * l2_normalize(e.astype(np.float32)) for e, w in zip(embeddings, weights)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def cosine_matches(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k of each (normalised) query against a (normalised) gallery.

    Returns:
        (indices (N, k), similarities (N, k)), best first, ties to the lower gallery index.
    """
    if queries.shape[1] != gallery.shape[1]:
        raise InputValidationError(
            f"embedding width {queries.shape[1]} does not match the gallery's {gallery.shape[1]}"
        )
    return top_k(l2_normalize(queries) @ l2_normalize(gallery).T, k)
