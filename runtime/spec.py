"""Model specs as data: inputs, outputs, batch profile, preprocessing, post-processing options.

A spec travels with every artifact (inside ``export.json``) so the runtime can rebuild the
whole pipeline without the zoo or torch. ``to_dict``/``from_dict`` round-trip through JSON and
reject unknown keys, naming them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchforge.errors import ConfigError

BATCH_DIM = "batch"
SUPPORTED_INPUT_DTYPES = ("float32", "float16", "uint8", "int64")


@dataclass(frozen=True)
class ProfileRange:
    """The batch sizes an engine serves: TensorRT's min/opt/max optimisation profile."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        values = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"profile batch sizes must be integers, got {values}")
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(
                f"profile must satisfy 1 <= min <= opt <= max, got min={self.min} "
                f"opt={self.opt} max={self.max}"
            )

    def with_overrides(
        self, min: int | None = None, opt: int | None = None, max: int | None = None
    ) -> ProfileRange:
        """Returns a new range with the given values replaced (validated)."""
        return ProfileRange(
            self.min if min is None else min,
            self.opt if opt is None else opt,
            self.max if max is None else max,
        )


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, shape with ``"batch"`` as the leading symbolic dim, dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.shape or self.shape[0] != BATCH_DIM:
            raise ConfigError(
                f"input {self.name!r} must have {BATCH_DIM!r} as its first dim, got {self.shape}"
            )
        if self.dtype not in SUPPORTED_INPUT_DTYPES:
            raise ConfigError(
                f"input {self.name!r} dtype must be one of {SUPPORTED_INPUT_DTYPES}, "
                f"got {self.dtype!r}"
            )

    @property
    def item_shape(self) -> tuple[int | str, ...]:
        """The shape of one item (without the batch dim)."""
        return tuple(self.shape[1:])


class ResizeMode(str, enum.Enum):
    """How an image is brought to the model's input size."""

    STRETCH = "stretch"  # resize to (H, W), aspect ratio not kept
    LETTERBOX = "letterbox"  # keep aspect ratio, pad with ``pad_value`` (centred)


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: decoded RGB uint8 HWC -> float32 CHW, normalised.

    ``mean``/``std`` are in 0..1 units (the image is scaled by 1/255 first). Resizing uses
    bilinear interpolation with half-pixel centres on float32 pixels (OpenCV INTER_LINEAR,
    same as torch ``interpolate(mode="bilinear", align_corners=False, antialias=False)``).
    """

    height: int
    width: int
    resize: ResizeMode = ResizeMode.STRETCH
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pad_value: float = 114.0

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"input size must be positive, got {self.height}x{self.width}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(
                f"mean and std must have 3 values and std > 0, got mean={self.mean} std={self.std}"
            )


@dataclass(frozen=True)
class ModelSpec:
    """Everything the runtime needs to know about one exported model."""

    name: str
    family: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    profile: ProfileRange
    preprocess: Preprocess | None = None
    postprocess: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.inputs or not self.outputs:
            raise ConfigError(f"model {self.name!r} needs at least one input and one output")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as values, tuples as lists)."""
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Parses a dict written by ``to_dict``; unknown or missing keys raise ConfigError."""
        _check_keys("model spec", data, cls)
        pre = data.get("preprocess")
        if pre is not None:
            _check_keys("preprocess", pre, Preprocess)
            pre = Preprocess(
                **{
                    **pre,
                    "resize": _enum_value(ResizeMode, pre.get("resize", "stretch")),
                    "mean": tuple(pre.get("mean", Preprocess.mean)),
                    "std": tuple(pre.get("std", Preprocess.std)),
                }
            )
        inputs = []
        for item in data["inputs"]:
            _check_keys("input", item, TensorSpec)
            inputs.append(TensorSpec(item["name"], tuple(item["shape"]), item.get("dtype", "float32")))
        _check_keys("profile", data["profile"], ProfileRange)
        return cls(
            name=data["name"],
            family=data["family"],
            inputs=tuple(inputs),
            outputs=tuple(data["outputs"]),
            profile=ProfileRange(**data["profile"]),
            preprocess=pre,
            postprocess=dict(data.get("postprocess", {})),
            description=data.get("description", ""),
        )


def _enum_value(enum_cls: type[enum.Enum], value: Any) -> enum.Enum:
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_cls)
        raise ConfigError(f"{enum_cls.__name__} must be one of {allowed}, got {value!r}") from None


def _check_keys(what: str, data: Mapping[str, Any], cls: type) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = sorted(set(required) - set(data))
    problems = [f"unknown key {k!r}" for k in unknown] + [f"missing key {k!r}" for k in missing]
    if problems:
        raise ConfigError(f"invalid {what}", problems=problems)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


def parse_options(cls: type, data: Mapping[str, Any] | None, what: str) -> Any:
    """Builds a frozen options dataclass from a mapping, rejecting unknown keys by name.

    Args:
        cls: the dataclass type (every field must have a default).
        data: the mapping, e.g. ``spec.postprocess``; None means all defaults.
        what: a name for messages ("reid postprocess").
    Returns:
        An instance of ``cls``.
    """
    data = dict(data or {})
    _check_keys(what, data, cls)
    converted = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            converted[f.name] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**converted)
    except TypeError as exc:
        raise ConfigError(f"invalid {what}", problems=[str(exc)]) from None


@dataclass(frozen=True)
class EnsembleMember:
    model: str
    weight: float


@dataclass(frozen=True)
class EnsembleSpec:
    """Several exported models whose outputs are fused (e.g. the reid ensemble).

    Stored as ``<output-dir>/<name>/ensemble.json``; members are ordinary model artifacts.
    """

    name: str
    family: str
    members: tuple[EnsembleMember, ...]
    postprocess: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        weights = [m.weight for m in self.members]
        if not self.members or min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
            raise ConfigError(
                f"ensemble {self.name!r} needs members with weights >= 0 summing to 1, got {weights}"
            )

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(m.weight for m in self.members)

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(m.model for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnsembleSpec:
        _check_keys("ensemble spec", data, cls)
        members = []
        for item in data["members"]:
            _check_keys("ensemble member", item, EnsembleMember)
            members.append(EnsembleMember(str(item["model"]), float(item["weight"])))
        return cls(
            name=data["name"], family=data["family"], members=tuple(members),
            postprocess=dict(data.get("postprocess", {})), description=data.get("description", ""),
        )
