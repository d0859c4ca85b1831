"""One declaration per family: every registry (runtime pipelines, sample generators, zoo modules,
parity checks, tolerances) derives from ``FAMILIES``.

Each part is a lazy ``"module:attr"`` string (``"module"`` for the parts that register themselves
on import), so this module imports nothing but the standard library: the runtime reads it without
torch, and the build stages read it without the gate. Adding a family is its modules plus one
``Family(...)`` line below; ``problems()`` (run by the suite for every family) names any part that
is missing or does not fit.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from batchforge.errors import UsageError


@dataclass(frozen=True)
class Family:
    """A family's parts.

    name: the ``family`` of a spec.
    pipeline: runtime Pipeline class (numpy + onnxruntime/tensorrt only).
    samples: deterministic generator ``(count, seed) -> [(name, item), ...]`` (numpy only).
    parity: module that registers the family's checks with the gate (torch side).
    zoo: modules that register the family's zoo models (torch side); empty for a family that
        only serves user models.
    ensemble_pipeline: Pipeline class for ensembles of the family, if it has any.
    """

    name: str
    pipeline: str
    samples: str
    parity: str
    zoo: tuple[str, ...] = ()
    ensemble_pipeline: str | None = None

    def load_pipeline(self) -> Any:
        return resolve(self.pipeline)

    def load_ensemble_pipeline(self) -> Any | None:
        return resolve(self.ensemble_pipeline) if self.ensemble_pipeline else None

    def load_samples(self) -> Any:
        return resolve(self.samples)


_RT, _EX, _PA = "batchforge.runtime.pipelines", "batchforge.export", "batchforge.parity"

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("reid", f"{_RT}.reid:ReidPipeline", f"{_EX}.samples.reid:sample_images", f"{_PA}.reid",
           zoo=(f"{_EX}.zoo.reid",), ensemble_pipeline=f"{_RT}.reid:ReidEnsemblePipeline"),
    Family("detector", f"{_RT}.detection:DetectorPipeline", f"{_EX}.samples.detection:object_images",
           f"{_PA}.detection", zoo=(f"{_EX}.zoo.detector",)),
    Family("facepose", f"{_RT}.detection:FacePosePipeline", f"{_EX}.samples.detection:face_images",
           f"{_PA}.detection", zoo=(f"{_EX}.zoo.facepose",)),
    Family("anomaly", f"{_RT}.anomaly:AnomalyPipeline", f"{_EX}.samples.anomaly:sample_images",
           f"{_PA}.anomaly", zoo=(f"{_EX}.zoo.anomaly",)),
    Family("keypoints", f"{_RT}.keypoints:KeypointsPipeline", f"{_EX}.samples.keypoints:sample_images",
           f"{_PA}.keypoints", zoo=(f"{_EX}.zoo.keypoints",)),
    Family("ptycho", f"{_RT}.ptycho:PtychoPipeline", f"{_EX}.samples.ptycho:sample_patterns",
           f"{_PA}.ptycho", zoo=(f"{_EX}.zoo.ptycho",)),
    Family("tensors", f"{_RT}.tensors:TensorsPipeline", f"{_EX}.samples.reid:sample_images", f"{_PA}.tensors"),
)}


def known() -> str:
    return ", ".join(sorted(FAMILIES))


def get_family(name: str) -> Family:
    """The declaration of ``name``; unknown names raise UsageError listing the known families."""
    if name not in FAMILIES:
        raise UsageError(f"unknown family {name!r}; known families: {known()}")
    return FAMILIES[name]


def resolve(text: str) -> Any:
    """Imports ``"module:attr"`` (the attribute) or ``"module"`` (the module)."""
    module_name, _, attr = text.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def problems(family: Family) -> list[str]:
    """Every part of ``family`` that is missing or does not fit (empty: complete). Imports the
    torch-side parts, so it belongs to tests and ``doctor``-like checks, not to the runtime."""
    from batchforge.runtime.artifacts import Precision
    from batchforge.runtime.pipelines.base import Pipeline
    from batchforge.tolerances import TOLERANCES

    found = []

    def part(label: str, text: str | None) -> Any:
        if text is None:
            return None
        try:
            return resolve(text)
        except (ImportError, AttributeError) as exc:
            found.append(f"{family.name}: {label} {text!r} cannot be loaded: {exc}")
            return None

    for label, text in (("pipeline", family.pipeline), ("ensemble_pipeline", family.ensemble_pipeline)):
        cls = part(label, text)
        if cls is not None and not (isinstance(cls, type) and issubclass(cls, Pipeline)):
            found.append(f"{family.name}: {label} {text!r} is not a Pipeline class")
    generate = part("samples", family.samples)
    if generate is not None:
        items = generate(1, 0)
        if len(items) != 1 or not isinstance(items[0], tuple) or len(items[0]) != 2:
            found.append(f"{family.name}: samples {family.samples!r} did not return [(name, item)] for count 1")
    if part("parity", family.parity) is not None:
        from batchforge.parity.gate import FAMILIES as CHECKS

        checks = CHECKS.get(family.name)
        if checks is None or type(checks).__module__ != family.parity:
            found.append(f"{family.name}: parity module {family.parity!r} registers no checks for it")
    missing = [p.value for p in Precision if p not in TOLERANCES.get(family.name, {})]
    if missing:
        found.append(f"{family.name}: no tolerances at {', '.join(missing)} (batchforge/tolerances.py)")
    if family.zoo:
        from batchforge.export.registry import ZOO

        for module in family.zoo:
            part("zoo module", module)
        if not any(entry.spec.family == family.name and entry.factory.partition(":")[0] in family.zoo
                   for entry in ZOO.values()):
            found.append(f"{family.name}: zoo modules {', '.join(family.zoo)} register no model of this family")
    return found
