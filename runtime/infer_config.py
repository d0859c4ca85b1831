"""``infer_config.json``: the deployment's anomaly post-processing, versioned and validated.

Layout (schema_version 2)::

    {
      "schema_version": 2,
      "model": "anomaly",                    optional: the model it was written for
      "defects": {"hysteresis_high": 1.25, "hysteresis_low": 1.0, "min_area": 16, ...},
      "tiling": {"enabled": true, "overlap_px": 32, "blend": "linear"},
      "image_threshold": 1.28
    }

The body maps onto ``AnomalyOptions`` (runtime.post.anomaly): a section given here replaces the
model's recorded section (export.json ``spec.postprocess``) as a whole, and keys missing from a
section take their defaults -- every defects step is off by default, so a config written
before a step existed keeps its output when the step is added. Sections left out keep the
model's. Use it with ``load_pipeline(model, overrides=load_infer_config(path).overrides())``.

Versions: 1 had ``defects`` and ``image_threshold``; 2 added ``tiling``. Older files load (a
key newer than the file's version is named as a problem); newer files are refused with the
version this batchforge reads. Loading validates everything and names every problem: unknown
keys, wrong types, out-of-range values, and hysteresis thresholds in the wrong order.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchforge.errors import EXIT_COULD_NOT_RUN, EXIT_OK, ConfigError
from batchforge.runtime.post.anomaly import AnomalyOptions, DefectsOptions
from batchforge.runtime.typed_options import build, convert, to_jsonable

SCHEMA_VERSION = 2
ADDED_IN = {"defects": 1, "image_threshold": 1, "tiling": 2}  # top-level key -> first version
HEADER_KEYS = ("schema_version", "model")


@dataclass(frozen=True)
class InferConfig:
    """A validated infer config: its version, the model it names, the options it sets."""

    schema_version: int
    options: AnomalyOptions
    model: str | None = None
    given: tuple[str, ...] = field(default_factory=tuple)  # the option sections the file sets

    def overrides(self) -> dict[str, Any]:
        """The sections this file sets, for ``load_pipeline(..., overrides=...)``."""
        return {name: getattr(self.options, name) for name in self.given}

    def check_model(self, model: str) -> None:
        """Raises ConfigError when the file names another model."""
        if self.model is not None and self.model != model:
            raise ConfigError(f"infer config was written for model {self.model!r}, not {model!r}",
                              hint="use the model's own config, or drop its 'model' key")


def _version_problems(data: Mapping[str, Any]) -> tuple[int | None, list[str]]:
    if "schema_version" not in data:
        return None, [f"missing key 'schema_version' (this batchforge writes {SCHEMA_VERSION})"]
    version, problems = convert(data["schema_version"], int, "schema_version")
    if problems:
        return None, problems
    if version > SCHEMA_VERSION:
        return None, [f"schema_version {version} is newer than this batchforge reads "
                      f"({SCHEMA_VERSION}): upgrade batchforge, or write a version-{SCHEMA_VERSION} file"]
    if version < 1:
        return None, [f"schema_version: expected 1..{SCHEMA_VERSION}, got {version}"]
    return version, []


def _order_problems(defects: DefectsOptions) -> list[str]:
    high, low = defects.hysteresis_high, defects.hysteresis_low
    if high is not None and low is not None and low > high:
        return [f"defects.hysteresis_low ({low:g}) is above defects.hysteresis_high ({high:g}): "
                "low grows regions from seeds at high, so low must be <= high (swapped?)"]
    return []


def parse_infer_config(data: Any) -> tuple[InferConfig | None, list[str]]:
    """Validates a parsed JSON document.

    Returns:
        (config or None, every problem found); the config is None when there is any problem.
    """
    if not isinstance(data, Mapping):
        return None, [f"expected a JSON object at the top level, got {type(data).__name__}"]
    version, problems = _version_problems(data)
    body = {k: v for k, v in data.items() if k not in HEADER_KEYS}
    if version is not None:
        problems += [f"'{k}' needs schema_version >= {ADDED_IN[k]}, the file says {version}"
                     for k in sorted(body) if k in ADDED_IN and ADDED_IN[k] > version]
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        problems.append(f"model: expected a string, got {type(model).__name__} {model!r}")
    options, found = build(AnomalyOptions, body)
    problems += found
    if options is not None:
        problems += _order_problems(options.defects)
    if problems:
        return None, problems
    assert version is not None and options is not None
    given = tuple(k for k in ("defects", "tiling", "image_threshold") if k in body)
    return InferConfig(version, options, model, given), []


def _read(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"infer config not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read infer config {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"infer config {path} is not valid JSON: {exc}") from None


def load_infer_config(path: str | os.PathLike[str]) -> InferConfig:
    """Reads and validates ``infer_config.json``.

    Raises:
        ConfigError listing every problem (``.problems``), or naming why the file is unreadable.
    """
    config, problems = parse_infer_config(_read(path))
    if problems:
        raise ConfigError(f"invalid infer config {path}", problems=problems,
                          hint="`batchforge validate-config FILE` lists them one per line")
    assert config is not None
    return config


def infer_config_document(options: AnomalyOptions, model: str | None = None) -> dict[str, Any]:
    """A complete, current-version infer config for ``options`` (e.g. a model's spec options)."""
    document: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    if model is not None:
        document["model"] = model
    document.update(to_jsonable(options))
    return document


def cmd_validate_config(args: argparse.Namespace) -> int:
    """``batchforge validate-config FILE``: prints every problem; exit 2 when there is one."""
    try:
        config, problems = parse_infer_config(_read(args.path))
    except ConfigError as exc:
        config, problems = None, [exc.message]
    if problems:
        for problem in problems:
            print(f"{args.path}: {problem}")
        print(f"{args.path}: INVALID ({len(problems)} problem{'s' if len(problems) > 1 else ''})")
        return EXIT_COULD_NOT_RUN
    assert config is not None
    sections = ", ".join(config.given) or "none (the model's recorded options apply)"
    print(f"{args.path}: valid (schema_version {config.schema_version}"
          f"{', model ' + config.model if config.model else ''}; sets {sections})")
    return EXIT_OK
