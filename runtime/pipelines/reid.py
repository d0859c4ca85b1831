"""Re-identification pipelines: one embedder, or a weighted ensemble of embedders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchforge.runtime.batching import infer_in_chunks
from batchforge.runtime.gallery import Gallery
from batchforge.runtime.images import to_rgb_uint8
from batchforge.runtime.pipelines.base import Pipeline, Prepared, image_feed
from batchforge.runtime.post.common import l2_normalize
from batchforge.runtime.post.reid import ReidOptions, cosine_matches, fuse_embeddings
from batchforge.runtime.results import Result
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import EnsembleSpec, ModelSpec, parse_options


@dataclass(frozen=True)
class ReidMatch:
    label: str
    gallery_index: int
    similarity: float


@dataclass(frozen=True)
class ReidResult(Result):
    """A unit-norm embedding and, when a gallery is attached, its best matches."""

    embedding: np.ndarray
    matches: tuple[ReidMatch, ...] = ()
    include_embedding: bool = False

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        record["embedding_dim"] = int(self.embedding.shape[0])
        record["matches"] = [
            {"label": m.label, "gallery_index": m.gallery_index, "similarity": m.similarity}
            for m in self.matches
        ]
        if self.include_embedding:
            record["embedding"] = self.embedding
        return record


class ReidPipeline(Pipeline):
    """One embedder: image -> unit-norm embedding (-> gallery matches)."""

    family = "reid"
    options_type = ReidOptions

    def __init__(self, spec: ModelSpec, runner: Runner, options: ReidOptions | None = None,
                 *, gallery: Gallery | None = None, **kwargs: Any) -> None:
        super().__init__(spec, runner, options, **kwargs)
        self.gallery = gallery

    @property
    def embedding_output(self) -> str:
        return self.spec.outputs[0]

    def embeddings(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The batch's unit-norm embeddings from raw outputs."""
        return l2_normalize(outputs[self.embedding_output].astype(np.float32))

    def postprocess(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Result]:
        return self._results(self.embeddings(outputs), items)

    def _results(self, embeddings: np.ndarray, items: Sequence[Prepared]) -> list[Result]:
        opts: ReidOptions = self.options
        matches: list[tuple[ReidMatch, ...]] = [()] * len(items)
        if self.gallery is not None:
            index, sims = cosine_matches(embeddings, self.gallery.embeddings, opts.top_k)
            matches = [
                tuple(ReidMatch(self.gallery.labels[j], int(j), float(s)) for j, s in zip(row_i, row_s))
                for row_i, row_s in zip(index, sims)
            ]
        return [
            ReidResult(item.source, emb, m, opts.include_embedding)
            for item, emb, m in zip(items, embeddings, matches)
        ]


class ReidEnsemblePipeline(ReidPipeline):
    """Several embedders, each with its own preprocessing, fused with the ensemble's weights."""

    def __init__(self, ensemble: EnsembleSpec, members: Sequence[tuple[ModelSpec, Runner]],
                 options: ReidOptions | None = None, *, gallery: Gallery | None = None,
                 **kwargs: Any) -> None:
        if options is None:
            options = parse_options(ReidOptions, ensemble.postprocess, "reid postprocess options")
        first_spec, first_runner = members[0]
        super().__init__(first_spec, first_runner, options, gallery=gallery, **kwargs)
        self.ensemble = ensemble
        self.members = list(members)

    @property
    def runners(self) -> list[Runner]:
        return [runner for _, runner in self.members]

    def prepare(self, item: np.ndarray, source: str) -> Prepared:
        image = to_rgb_uint8(item, source=source, max_pixels=self.max_pixels)
        feed: dict[str, np.ndarray] = {}
        geometries = []
        for spec, _ in self.members:
            member_feed, geometry = image_feed(image, spec)
            feed.update({f"{spec.name}/{k}": v for k, v in member_feed.items()})
            geometries.append(geometry)
        return Prepared(source, feed, geometries)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs: dict[str, np.ndarray] = {}
        for spec, runner in self.members:
            prefix = f"{spec.name}/"
            member_feed = {k[len(prefix):]: v for k, v in feed.items() if k.startswith(prefix)}
            out = infer_in_chunks(runner, member_feed, self.max_batch)
            outputs.update({prefix + k: v for k, v in out.items()})
        return outputs

    def member_embeddings(self, outputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [outputs[f"{spec.name}/{spec.outputs[0]}"] for spec, _ in self.members]

    def embeddings(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return fuse_embeddings(self.member_embeddings(outputs), self.ensemble.weights)
