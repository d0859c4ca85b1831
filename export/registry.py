"""The model zoo registry: name -> (spec, factory). Families register with ``@register``.

Lookups of unknown names fail with the list of known names. User models enter through
``module:factory`` plus a spec file (see ``batchforge.export.usermodel``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchforge.errors import UsageError
from batchforge.families import FAMILIES
from batchforge.runtime.spec import EnsembleSpec, ModelSpec


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its spec and a factory returning the initialised ``torch.nn.Module``.

    ``factory`` is ``"module:function"`` so an export record can name it and parity can
    rebuild the same architecture in another process.
    """

    spec: ModelSpec
    factory: str
    weights: str | None = None  # "module:function" -> the path of trained weights the model ships with

    def build(self) -> Any:
        """Calls the factory (seeded, activation-calibrated init for zoo models)."""
        return resolve_factory(self.factory)()

    def default_weights(self) -> str:
        """The path of the entry's shipped weights (``weights`` resolved and called)."""
        assert self.weights is not None
        return str(resolve_factory(self.weights)())


ZOO: dict[str, ZooEntry] = {}
ENSEMBLES: dict[str, EnsembleSpec] = {}

# Importing these modules fills the registries (declared per family in batchforge/families.py).
FAMILY_MODULES = tuple(dict.fromkeys(m for f in FAMILIES.values() for m in f.zoo))


def register(spec: ModelSpec, weights: Callable[[], Any] | None = None
             ) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator registering a zero-argument factory under ``spec.name``; ``weights`` returns the
    path of trained weights the model ships with (exported unless ``--weights`` names others)."""

    def wrap(factory: Callable[[], Any]) -> Callable[[], Any]:
        if spec.name in ZOO or spec.name in ENSEMBLES:
            raise UsageError(f"zoo model {spec.name!r} is registered twice")
        shipped = f"{weights.__module__}:{weights.__name__}" if weights else None
        ZOO[spec.name] = ZooEntry(spec, f"{factory.__module__}:{factory.__name__}", shipped)
        return factory

    return wrap


def register_ensemble(ensemble: EnsembleSpec) -> None:
    """Registers an ensemble whose members are zoo models."""
    if ensemble.name in ZOO or ensemble.name in ENSEMBLES:
        raise UsageError(f"zoo name {ensemble.name!r} is registered twice")
    ENSEMBLES[ensemble.name] = ensemble


def load_zoo() -> None:
    """Imports the family modules (idempotent)."""
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def known_names() -> list[str]:
    load_zoo()
    return sorted(ZOO) + sorted(ENSEMBLES)


def get_model(name: str) -> ZooEntry:
    """The zoo entry for ``name``; unknown names raise UsageError listing the known ones."""
    load_zoo()
    if name not in ZOO:
        if name in ENSEMBLES:
            raise UsageError(f"{name!r} is an ensemble, not a single model")
        raise UsageError(f"unknown model {name!r}; known: {', '.join(known_names())}",
                         hint="list them with `batchforge models`")
    return ZOO[name]


def is_zoo_factory(factory: str) -> bool:
    """Whether ``factory`` ("module:function") is a zoo model's (batchforge's own seeded init).
    Only the factory's own module is imported (the whole zoo costs 2.8 s of imports)."""
    module = factory.partition(":")[0]
    if module not in FAMILY_MODULES:
        return False
    importlib.import_module(module)
    return any(entry.factory == factory for entry in ZOO.values())


def get_ensemble(name: str) -> EnsembleSpec | None:
    load_zoo()
    return ENSEMBLES.get(name)


def expand_names(names: list[str], all_models: bool) -> list[str]:
    """Model names for ``MODEL... | --all``, ensembles expanded to members (order kept, unique)."""
    load_zoo()
    if all_models:
        names = known_names()
    if not names:
        raise UsageError("no model given: name one or more models, or pass --all",
                         hint="list them with `batchforge models`")
    out: list[str] = []
    for name in names:
        ensemble = ENSEMBLES.get(name)
        for member in ensemble.member_names if ensemble else (get_model(name).spec.name,):
            if member not in out:
                out.append(member)
    return out


def resolve_factory(text: str) -> Callable[[], Any]:
    """Imports ``"package.module:function"`` and returns the callable."""
    module_name, sep, attr = text.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"factory must look like 'package.module:function', got {text!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} for factory {text!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{module_name!r} has no callable {attr!r} (factory {text!r})")
    return factory
