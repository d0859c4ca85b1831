"""One parity run: loads references and engines once, caches their outputs on evaluation sets.

Within a run the PyTorch reference of a model is computed once per evaluation set and shared by
every precision and by ensembles that contain the model. Nothing is cached across runs.
"""

from __future__ import annotations

import abc
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from batchforge.errors import ArtifactError
from batchforge.export.reference import TorchRunner, load_reference, torch_preprocess, trusted_factory
from batchforge.export.registry import ZOO, load_zoo
from batchforge.memory import release_memory
from batchforge.progress import progress
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.batching import chunk_slices, stack_feeds
from batchforge.runtime.loading import load_pipeline
from batchforge.runtime.pipelines.base import Pipeline, Prepared
from batchforge.runtime.results import Result
from batchforge.runtime.spec import ModelSpec


@dataclass(frozen=True)
class EvalItem:
    """One evaluation input: a name and the raw item (RGB uint8 image, array, or what the family's
    ``prepare`` / ``reference_inputs`` take, e.g. the tensors family's TensorItem)."""

    source: str
    data: Any


@dataclass(frozen=True)
class EvalSet:
    """A named, deterministic evaluation set; ``extra`` holds family data (e.g. gallery split)."""

    key: str
    items: tuple[EvalItem, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ReferenceRun:
    raw: dict[str, np.ndarray]
    metas: list[Any]
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)  # from the reference alone: once for all precisions


@dataclass
class EngineRun:
    pipeline: Pipeline | None  # None once released: only ``raw`` is kept (for ensembles)
    prepared: list[Prepared]
    raw: dict[str, np.ndarray]


class FamilyParity(abc.ABC):
    """What the gate needs to know about one family.

    The reference side must be independent of the runtime code under test: its inputs come
    from torch preprocessing, and ``reference_decode`` should use torch/torchvision ops (or,
    where no independent implementation is practical, the runtime decode with the zoo's
    canonical options -- say so in the docstring).
    """

    family: ClassVar[str]
    # an evaluation set depends on the family only (shared by its models), or on each model's
    # inputs (the generic tensors family)
    eval_set_per_model: ClassVar[bool] = False

    @abc.abstractmethod
    def eval_set(self, spec: ModelSpec, size: int | None) -> EvalSet:
        """The deterministic evaluation set (``size`` overrides the default count)."""

    def reference_inputs(self, item: EvalItem, spec: ModelSpec) -> tuple[dict[str, np.ndarray], Any]:
        """(feed without batch dim, meta) built with torch-side preprocessing: by default the
        image families' (the meta is the letterbox/resize Geometry)."""
        assert spec.preprocess is not None, f"{spec.name}: image families need a preprocess spec"
        tensor, geometry = torch_preprocess(item.data, spec.preprocess)
        return {spec.inputs[0].name: tensor.numpy()}, geometry

    def output_limits(self, ctx: ModelContext, output: str) -> Mapping[str, Any]:
        """The limits of one output's raw checks: the family's tier unless the family lets the
        spec declare per-output tolerances."""
        return ctx.limits

    def raw_view(self, ctx: ModelContext, output: str, reference: np.ndarray, engine: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, str]:
        """The part of one raw output the gate's raw checks compare, and a note saying which (by
        default all of it, no note)."""
        return reference, engine, ""

    @abc.abstractmethod
    def task_checks(self, ctx: ModelContext) -> list[Any]:
        """Checks on decoded outputs (list of parity.report.Check)."""

    @abc.abstractmethod
    def batch_quantities(self, results: Sequence[Result]) -> dict[str, list[np.ndarray]]:
        """Decoded quantities compared between batch sizes, one array per item each."""


@dataclass
class ModelContext:
    """Everything a family's task checks see for one model at one precision."""

    session: ParitySession
    name: str
    precision: Precision
    spec: ModelSpec
    reference_spec: ModelSpec
    limits: Mapping[str, Any]
    eval_set: EvalSet
    reference: ReferenceRun
    engine: EngineRun
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)  # what a family computes once per run


class ParitySession:
    """Shared state of one ``batchforge parity`` invocation."""

    def __init__(self, output_dir: str | os.PathLike[str], backend: str, *, threads: int = 0,
                 eval_size: int | None = None, show_progress: bool = True,
                 data: str | os.PathLike[str] | None = None, factories: Sequence[str] = ()) -> None:
        self.output_dir = output_dir
        self.factories = tuple(factories)  # ``parity --factory``: user factories the user trusts
        self.data = data  # ``parity --data``: the user's inputs instead of the family's generator
        self.backend = backend
        self.threads = threads
        self.eval_size = eval_size
        self.show_progress = show_progress
        self._modules: dict[str, torch.nn.Module] = {}
        self._reference_runs: dict[tuple[str, str], ReferenceRun] = {}
        self._engine_runs: dict[tuple[str, str, str], EngineRun] = {}
        self._eval_sets: dict[str, EvalSet] = {}
        self._on_engine_inputs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self.runner_names: dict[tuple[str, str], list[str]] = {}  # the artifacts each run loaded

    def ran(self, name: str, precision: Precision, pipeline: Any) -> None:
        """Records which artifacts ``pipeline`` runs for ``name`` at ``precision`` (the report says)."""
        names = self.runner_names.setdefault((name, precision.value), [])
        names += [r.name for r in getattr(pipeline, "runners", ()) if r.name not in names]

    def artifacts(self, name: str) -> ModelArtifacts:
        return ModelArtifacts.at(self.output_dir, name)

    def reference_spec(self, name: str, recorded: ModelSpec) -> tuple[ModelSpec, str | None]:
        """The spec the reference uses: the zoo's canonical one, else the recorded one. The
        factory export.json names is checked here, before any work: it must be a zoo model's or
        given with ``--factory`` (a record is data, not code to run).

        Returns:
            (spec, note) where note explains a fallback to the recorded spec and names the factory.
        """
        artifacts = self.artifacts(name)
        record = artifacts.export_record()
        trust = trusted_factory(artifacts, record, self.factories)
        load_zoo()
        if name in ZOO:
            return ZOO[name].spec, None
        return recorded, (f"user model: reference built by factory {record['factory']!r} ({trust}); "
                          "reference preprocessing taken from export.json, so a "
                          "wrong preprocessing config there cannot be detected")

    def eval_set(self, family: FamilyParity, spec: ModelSpec) -> EvalSet:
        """One set per family per run: it depends on the family and ``--eval-size`` only, so the
        reid members and their ensemble (and every precision) share theirs. With ``data`` (and for
        families whose sets depend on the model's inputs) one set per model."""
        key = f"{family.family}/{spec.name}" if family.eval_set_per_model or self.data else family.family
        if key not in self._eval_sets:
            self._eval_sets[key] = (self._user_eval_set(family, spec) if self.data is not None
                                    else family.eval_set(spec, self.eval_size))
        return self._eval_sets[key]

    def _user_eval_set(self, family: FamilyParity, spec: ModelSpec) -> EvalSet:
        from batchforge.parity.user_data import EXTRA, read_user_data, same_as_calibration

        assert self.data is not None
        data = read_user_data(self.data, spec, self.eval_size)
        for warning in same_as_calibration(self.artifacts(spec.name), data):
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        return EvalSet(f"data-{data.sha256[:16]}", data.items,
                       {**EXTRA.get(family.family, {}), "note": f"data: {data.source} ({len(data.items)} items)"})

    def module(self, name: str) -> torch.nn.Module:
        if name not in self._modules:
            self._modules[name] = load_reference(self.artifacts(name), factories=self.factories)
        return self._modules[name]

    def reference_run(self, name: str, spec: ModelSpec, family: FamilyParity, eval_set: EvalSet) -> ReferenceRun:
        """The FP32 PyTorch outputs on an evaluation set (computed once per run)."""
        key = (name, eval_set.key)
        if key not in self._reference_runs:
            inputs = [family.reference_inputs(item, spec) for item in eval_set.items]
            metas = [meta for _, meta in inputs]
            runner = TorchRunner(self.module(name), spec)
            with runner:
                raw = self._batched(runner.infer, [feed for feed, _ in inputs], spec.profile.opt,
                                    f"{name} reference")
            self._reference_runs[key] = ReferenceRun(raw, metas)
            # the outputs are what later precisions and ensembles need: the module (ViT-B/16:
            # 350 MB of weights) is loaded again only by a family that runs it once more
            self._modules.pop(name, None)
        return self._reference_runs[key]

    def reference_on_engine_inputs(self, name: str, spec: ModelSpec, eval_set: EvalSet,
                                   prepared: Sequence[Prepared]) -> dict[str, np.ndarray]:
        """The FP32 PyTorch outputs on the runtime's preprocessed feeds (``prepared``), once per
        model and evaluation set: against ``reference_run`` (torch preprocessing) it measures what
        preprocessing alone changes, the floor no engine comparison can go below."""
        key = (name, eval_set.key)
        if key not in self._on_engine_inputs:
            with TorchRunner(self.module(name), spec) as runner:
                self._on_engine_inputs[key] = self._batched(runner.infer, [p.feed for p in prepared],
                                                            spec.profile.opt, f"{name} reference on runtime inputs")
            self._modules.pop(name, None)
        return self._on_engine_inputs[key]

    def engine_run(self, name: str, precision: Precision, eval_set: EvalSet, *,
                   raw_only: bool = False) -> EngineRun:
        """The engine's outputs through the runtime pipeline (its preprocessing, max batch).

        A run whose session was released keeps only its raw outputs: enough for ``raw_only``
        callers (ensembles); anyone else gets the model run again (an ensemble checked before
        its members released them)."""
        key = (name, precision.value, eval_set.key)
        cached = self._engine_runs.get(key)
        if cached is None or (cached.pipeline is None and not raw_only):
            pipeline = load_pipeline(name, output_dir=self.output_dir, precision=precision,
                                     backend=self.backend, threads=self.threads)
            pipeline.activate()
            self.ran(name, precision, pipeline)
            prepared = [pipeline.prepare(item.data, item.source) for item in eval_set.items]
            raw = self._batched(pipeline.infer, [p.feed for p in prepared], pipeline.max_batch,
                                f"{name} {precision.value}")
            self._engine_runs[key] = EngineRun(pipeline, prepared, raw)
        return self._engine_runs[key]

    def _batched(self, infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                 feeds: Sequence[Mapping[str, np.ndarray]], batch: int, label: str) -> dict[str, np.ndarray]:
        if not feeds:
            raise ArtifactError(f"{label}: empty evaluation set")
        parts: dict[str, list[np.ndarray]] = {}
        slices = list(chunk_slices(len(feeds), batch))
        for part in progress(slices, desc=label, enabled=self.show_progress):
            out = infer(stack_feeds(feeds[part]))
            for key, value in out.items():
                parts.setdefault(key, []).append(value)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def release(self, name: str, precision: Precision) -> None:
        """Done with one model at one precision: closes its engine session (arenas hold GBs at
        max batch) and drops its prepared inputs; the raw outputs stay for the ensembles."""
        held = [k for k, run in self._engine_runs.items()
                if k[:2] == (name, precision.value) and run.pipeline is not None]
        for key in held:
            run = self._engine_runs[key]
            run.pipeline.deactivate()  # type: ignore[union-attr]
            self._engine_runs[key] = EngineRun(None, [], run.raw)
        if self._modules.pop(name, None) is not None or held:  # a second call frees nothing
            release_memory()

    def close(self) -> None:
        for run in self._engine_runs.values():
            if run.pipeline is not None:
                run.pipeline.deactivate()
        self._engine_runs.clear()
        self._reference_runs.clear()
        self._on_engine_inputs.clear()
        self._modules.clear()
        release_memory()

