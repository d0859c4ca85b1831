"""The PyTorch reference: a Runner around the FP32 module, and an independent preprocessing.

Parity feeds the reference with ``torch_preprocess`` (written with torch ops, not with the
runtime's OpenCV code) so a runtime preprocessing bug, or a wrong preprocessing config in an
artifact, shows up as a parity failure instead of being reproduced on both sides.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from batchforge.errors import ArtifactError
from batchforge.export.registry import resolve_factory
from batchforge.export.weights import load_weights
from batchforge.runtime.artifacts import ModelArtifacts
from batchforge.runtime.preprocess import Geometry
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import ModelSpec, Preprocess, ResizeMode
from batchforge.runtime.validation import IOMeta


def torch_preprocess(image: np.ndarray, pre: Preprocess) -> tuple[torch.Tensor, Geometry]:
    """RGB uint8 (H, W, 3) -> (float32 (3, h, w), geometry), written independently with torch.

    Returns:
        The normalised input and how its pixels map back to the image (computed here, not by
        the runtime, so a runtime letterbox bug cannot hide on both sides).
    """
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32)[None]
    height, width = image.shape[:2]
    if pre.resize is ResizeMode.LETTERBOX:
        ratio = min(pre.height / height, pre.width / width)
        new_h = max(1, min(pre.height, round(height * ratio)))
        new_w = max(1, min(pre.width, round(width * ratio)))
        top, left = (pre.height - new_h) // 2, (pre.width - new_w) // 2
        canvas = torch.full((1, 3, pre.height, pre.width), float(pre.pad_value))
        canvas[:, :, top : top + new_h, left : left + new_w] = _bilinear(x, new_h, new_w)
        x = canvas
        geometry = Geometry(height, width, new_w / width, new_h / height, float(left), float(top))
    else:
        x = _bilinear(x, pre.height, pre.width)
        geometry = Geometry(height, width, pre.width / width, pre.height / height, 0.0, 0.0)
    if pre.channel_order == "BGR":
        x = x.flip(1)
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x / 255.0 - mean) / std)[0], geometry


def _bilinear(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                         antialias=False)


class TorchRunner(Runner):
    """Runs a torch module on numpy feeds (CPU, FP32, inference mode), outputs by spec name."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, spec: ModelSpec, *, name: str | None = None) -> None:
        super().__init__(name=name or f"{spec.name}:torch", profile=None)
        self.module = module
        self.spec = spec

    def activate_impl(self) -> None:
        self.module.eval()

    def deactivate_impl(self) -> None:
        pass

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.spec.outputs

    def input_metadata_impl(self) -> dict[str, IOMeta]:
        return {t.name: IOMeta(t.name, t.shape, np.dtype(t.dtype)) for t in self.spec.inputs}

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.module(*[torch.from_numpy(feed[n]) for n in self.spec.input_names])
        values = out if isinstance(out, (tuple, list)) else (out,)
        if len(values) != len(self.spec.outputs):
            raise ArtifactError(
                f"{self.spec.name}: module returned {len(values)} outputs, spec names "
                f"{len(self.spec.outputs)} ({', '.join(self.spec.outputs)})"
            )
        return {n: v.detach().cpu().numpy() for n, v in zip(self.spec.outputs, values)}


def build_module(factory: str, *, initialise: bool = True) -> torch.nn.Module:
    """Calls a ``module:function`` factory; zoo factories skip their init when not needed."""
    fn = resolve_factory(factory)
    if "initialise" not in inspect.signature(fn).parameters:
        return fn()
    if not initialise:
        return fn(initialise=False)
    from batchforge.export.zoo.init import init_threads

    with init_threads():  # the init's numbers do not depend on the machine's core count
        return fn(initialise=True)


def trusted_factory(artifacts: ModelArtifacts, record: Mapping[str, Any], given: Collection[str] = ()) -> str:
    """The factory ``record`` names, once it is known to be code the user chose to run.

    A record is data, possibly from elsewhere: the factory it names is imported only when it is
    a zoo model's (batchforge's own code) or was given on the command line (``given``).

    Returns:
        Where the trust comes from: "the zoo's" or "given with --factory".
    """
    from batchforge.export.registry import ZOO, load_zoo

    factory = record.get("factory")
    if not isinstance(factory, str) or not factory:
        raise ArtifactError(f"{artifacts.export_record_path} names no factory (expected a 'module:function' "
                            f"string, got {factory!r})",
                            hint=f"re-export with `batchforge export {artifacts.model}`")
    load_zoo()
    if factory in {entry.factory for entry in ZOO.values()}:
        return "the zoo's"
    if factory in given:
        return "given with --factory"
    named = f"; --factory given: {', '.join(sorted(given))}" if given else ""
    raise ArtifactError(f"{artifacts.export_record_path} names factory {factory!r}, which is no zoo model's and "
                        f"was not given with --factory{named}: code a record names is not imported",
                        hint=f"if you trust it, pass --factory {factory}")


def load_reference(artifacts: ModelArtifacts, record: Mapping[str, Any] | None = None, *,
                   factories: Collection[str] = ()) -> torch.nn.Module:
    """Rebuilds the exported module: the recorded factory + the saved reference weights.

    Args:
        factories: the factories the user gave (``--factory``); a record's other than a zoo
            model's is refused (see ``trusted_factory``).
    """
    record = record or artifacts.export_record()
    trusted_factory(artifacts, record, factories)
    weights = record.get("weights") or {}
    expected = weights.get("sha256") if isinstance(weights, Mapping) else weights
    if expected is not None and not isinstance(expected, str):
        raise ArtifactError(f"{artifacts.export_record_path}: weights.sha256 must be a string, got "
                            f"{type(expected).__name__} {expected!r:.40}",
                            hint=f"re-export with `batchforge export {artifacts.model}`")
    module = build_module(record["factory"], initialise=False)
    load_weights(module, artifacts.reference_weights, expected_sha256=expected)
    return module.eval()
