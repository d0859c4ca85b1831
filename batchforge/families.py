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
    image_input: its first input is an image, so a spec needs ``preprocess``.
    inputs / outputs: how many inputs its pipeline feeds and outputs its pipeline and parity
        checks read (None: any number); ``spec_problems`` holds a spec to them.
    """

    name: str
    pipeline: str
    samples: str
    parity: str
    zoo: tuple[str, ...] = ()
    ensemble_pipeline: str | None = None
    image_input: bool = True
    inputs: int | None = 1
    outputs: int | None = None

    def load_pipeline(self) -> Any:
        return resolve(self.pipeline)

    def load_ensemble_pipeline(self) -> Any | None:
        return resolve(self.ensemble_pipeline) if self.ensemble_pipeline else None

    def load_samples(self) -> Any:
        return resolve(self.samples)

    def spec_problems(self, spec: Any, root: str = "spec.") -> list[str]:
        """What parity and run will refuse in ``spec`` (a ModelSpec of this family), found before a
        slow export: input/output counts, image preprocessing, and the postprocess options parsed
        by the pipeline's own options type, then the pipeline's own checks of the spec (it is
        built without a runner). Each problem names its path under ``root``."""
        from batchforge.errors import ConfigError
        from batchforge.runtime.spec import parse_options
        from batchforge.runtime.typed_options import prefixed

        found = []
        for what, wanted, names in (("inputs", self.inputs, spec.input_names),
                                    ("outputs", self.outputs, spec.outputs)):
            if wanted is not None and len(names) != wanted:
                found.append(f"{root}{what}: family {self.name!r} reads {wanted} {what[:-1]}(s), the spec "
                             f"names {len(names)} ({', '.join(names)}); a model with other {what} is "
                             "family 'tensors'")
        if self.image_input and spec.preprocess is None:
            found.append(f"{root}preprocess: family {self.name!r} feeds images, so the spec needs a "
                         'preprocess, e.g. {"height": 224, "width": 224}; got none')
        pipeline = self.load_pipeline()
        try:
            options = parse_options(pipeline.options_type, spec.postprocess, f"{self.name} postprocess options")
        except ConfigError as exc:
            return found + ([prefixed(f"{root}postprocess.", p) for p in exc.problems]
                            or [f"{root}postprocess: {exc.message}"])
        if not found:
            try:
                pipeline(spec, None, options)
            except ConfigError as exc:
                found.append(f"{root.rstrip('.')}: {exc.message}")
        return found


_RT, _EX, _PA = "batchforge.runtime.pipelines", "batchforge.export", "batchforge.parity"

# outputs: reid and keypoints read outputs[0] (embedding, heatmaps); detector/facepose's pipeline
# names its outputs (boxes, scores[, pose]); anomaly and ptycho read two (map + score, amplitude + phase);
# mtcnn's stage models read theirs by name (2 or 3), its detector is the three-stage ensemble "mtcnn"
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("reid", f"{_RT}.reid:ReidPipeline", f"{_EX}.samples.reid:sample_images", f"{_PA}.reid",
           zoo=(f"{_EX}.zoo.reid",), ensemble_pipeline=f"{_RT}.reid:ReidEnsemblePipeline", outputs=1),
    Family("detector", f"{_RT}.detection:DetectorPipeline", f"{_EX}.samples.detection:object_images",
           f"{_PA}.detection", zoo=(f"{_EX}.zoo.detector",), outputs=2),
    Family("facepose", f"{_RT}.detection:FacePosePipeline", f"{_EX}.samples.detection:face_images",
           f"{_PA}.detection", zoo=(f"{_EX}.zoo.facepose",), outputs=3),
    Family("anomaly", f"{_RT}.anomaly:AnomalyPipeline", f"{_EX}.samples.anomaly:sample_images",
           f"{_PA}.anomaly", zoo=(f"{_EX}.zoo.anomaly",), outputs=2),
    Family("keypoints", f"{_RT}.keypoints:KeypointsPipeline", f"{_EX}.samples.keypoints:sample_images",
           f"{_PA}.keypoints", zoo=(f"{_EX}.zoo.keypoints",), outputs=1),
    Family("ptycho", f"{_RT}.ptycho:PtychoPipeline", f"{_EX}.samples.ptycho:sample_patterns",
           f"{_PA}.ptycho", zoo=(f"{_EX}.zoo.ptycho",), image_input=False, outputs=2),
    Family("mtcnn", f"{_RT}.mtcnn:MtcnnStagePipeline", f"{_EX}.samples.mtcnn:sample_images", f"{_PA}.mtcnn",
           zoo=(f"{_EX}.zoo.mtcnn",), ensemble_pipeline=f"{_RT}.mtcnn:MtcnnPipeline", image_input=False,
           outputs=None),
    Family("tensors", f"{_RT}.tensors:TensorsPipeline", f"{_EX}.samples.reid:sample_images", f"{_PA}.tensors",
           image_input=False, inputs=None),
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
        mine = [entry for entry in ZOO.values()
                if entry.spec.family == family.name and entry.factory.partition(":")[0] in family.zoo]
        if not mine:
            found.append(f"{family.name}: zoo modules {', '.join(family.zoo)} register no model of this family")
        if not found:  # the declaration (input/output counts, options) fits the family's own zoo
            found += [f"{family.name}: zoo model {e.spec.name!r}: {p}"
                      for e in mine for p in family.spec_problems(e.spec)]
    return found
