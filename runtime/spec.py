"""Model specs as data: inputs, outputs, batch profile, preprocessing, post-processing options.

A spec travels with every artifact (inside ``export.json``) so the runtime can rebuild the
whole pipeline without the zoo or torch. ``to_dict``/``from_dict`` round-trip through JSON and
reject unknown keys, naming them.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchforge.errors import ConfigError
from batchforge.safe_paths import name_problem

BATCH_DIM = "batch"
SUPPORTED_INPUT_DTYPES = ("float32", "float16", "uint8", "int64")
# the largest size a spec may give (a dim, a batch, an image side): TensorRT profiles and OpenCV
# sizes are 32-bit, so a larger one could only fail later, in a library's own words
MAX_SIZE = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38


def _too_large(values: tuple[Any, ...]) -> list[Any]:
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > MAX_SIZE]


def _finite32(value: Any) -> bool:
    """A number float32 holds (preprocessing runs in float32): not NaN, infinite or beyond its range."""
    try:
        return math.isfinite(value) and abs(value) <= FLOAT32_MAX
    except OverflowError:  # an int too large for a float
        return False


def _size_text(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:8]}...({len(text)} digits)"


@dataclass(frozen=True)
class ProfileRange:
    """The sizes one dynamic dim takes (the batch, or a named dim such as "height"): TensorRT's
    min/opt/max optimisation profile."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        values = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"profile sizes must be integers, got {values}")
        if _too_large(values):
            raise ConfigError(f"profile sizes must be at most {MAX_SIZE:,}, got "
                              f"{', '.join(_size_text(v) for v in _too_large(values))}")
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
        if _too_large(self.shape):
            raise ConfigError(f"input {self.name!r} sizes must be at most {MAX_SIZE:,}, got "
                              f"{', '.join(_size_text(v) for v in _too_large(self.shape))}")
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
        sizes = (self.height, self.width)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
            raise ConfigError(f"height and width must be integers, got {sizes}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*self.mean, *self.std)):
            raise ConfigError(f"mean and std must be numbers, got mean={self.mean} std={self.std}")
        if _too_large(sizes):
            raise ConfigError(f"height and width must be at most {MAX_SIZE:,}, got "
                              f"{', '.join(_size_text(v) for v in _too_large(sizes))}")
        # NaN or infinity here makes every later input NaN: refused where it is written
        if not all(_finite32(v) for v in (*self.mean, *self.std)):
            raise ConfigError(f"mean and std must be finite numbers, got mean={list(self.mean)} std={list(self.std)}")
        if isinstance(self.pad_value, bool) or not isinstance(self.pad_value, (int, float)) \
                or not _finite32(self.pad_value):
            raise ConfigError(f"pad_value must be a finite number, got {self.pad_value!r}")
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
    # named non-batch dims ("height", "width") -> the sizes they take: min/opt/max like the batch
    # profile. Every dim named here is dynamic in the ONNX graph, checked at export at several
    # sizes, set in TensorRT profiles and validated by the runners.
    dims: Mapping[str, ProfileRange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs or not self.outputs:
            raise ConfigError(f"model {self.name!r} needs at least one input and one output")
        named = {d for t in self.inputs for d in t.item_shape if isinstance(d, str)}
        unused = sorted(set(self.dims) - named)
        if unused:
            raise ConfigError(f"model {self.name!r}: dims {unused} are given ranges but no input shape "
                              f"names them (named dims: {sorted(named) or 'none'})")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    def input_shapes(self, tensor: TensorSpec, profile: ProfileRange | None = None
                     ) -> tuple[tuple[int | str, ...], tuple[int | str, ...], tuple[int | str, ...]]:
        """(min, opt, max) shapes of ``tensor``: the batch from ``profile`` (default: the spec's),
        each named dim from ``dims``; a named dim without a range stays its name."""
        profile = profile or self.profile

        def shape(pick: str) -> tuple[int | str, ...]:
            item = tuple(getattr(self.dims[d], pick) if isinstance(d, str) and d in self.dims else d
                         for d in tensor.item_shape)
            return (getattr(profile, pick), *item)

        return shape("min"), shape("opt"), shape("max")

    def dim_ranges(self) -> dict[str, dict[int, tuple[str, ProfileRange]]]:
        """input name -> axis -> (dim name, range) of every named dim with a range (runners
        validate fed sizes against them)."""
        return {t.name: {axis: (d, self.dims[d]) for axis, d in enumerate(t.shape)
                         if axis > 0 and isinstance(d, str) and d in self.dims}
                for t in self.inputs if any(isinstance(d, str) and d in self.dims for d in t.item_shape)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as values, tuples as lists)."""
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Parses a dict written by ``to_dict``; every unknown or missing key and wrong value
        raises one ConfigError naming each (``parse_model_spec``)."""
        spec, problems = parse_model_spec(data)
        if problems:
            raise ConfigError("invalid model spec", problems=problems)
        assert spec is not None
        return spec


def parse_model_spec(data: Any, root: str = "") -> tuple[ModelSpec | None, list[str]]:
    """Builds a ModelSpec from JSON data, collecting every problem instead of stopping at the first.

    Args:
        data: the parsed JSON.
        root: the dotted path of ``data`` for messages (``"spec."`` names ``spec.inputs[0].name``).
    Returns:
        (spec or None, problems), each problem naming its path, what was expected and what was given.
    """
    if not isinstance(data, Mapping):
        return None, [f"{root.rstrip('.') or 'model spec'}: expected a JSON object, got {type(data).__name__}"]
    problems = _key_problems(root, data, ModelSpec)
    for key in ("name", "family"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            problems.append(f"{root}{key}: expected a non-empty string, got {data[key]!r}")
    if isinstance(data.get("name"), str) and data["name"].strip() and name_problem(data["name"]):
        problems.append(f"{root}name: {name_problem(data['name'])}; it names the model's folder")
    if not isinstance(data.get("description", ""), str):
        problems.append(f"{root}description: expected a string, got {data['description']!r}")
    if not isinstance(data.get("postprocess", {}), Mapping):
        problems.append(f"{root}postprocess: expected an object of the family's options, "
                        f"got {type(data['postprocess']).__name__}")
    inputs, found = _parse_inputs(data.get("inputs", []), f"{root}inputs") if "inputs" in data else ((), [])
    problems += found
    outputs, found = _parse_outputs(data.get("outputs", []), f"{root}outputs") if "outputs" in data else ((), [])
    problems += found
    profile, found = _parse_section(data.get("profile", {}), f"{root}profile", ProfileRange,
                                    lambda d: ProfileRange(**d)) if "profile" in data else (None, [])
    problems += found
    preprocess, found = (None, [])
    if data.get("preprocess") is not None:
        preprocess, found = _parse_section(data["preprocess"], f"{root}preprocess", Preprocess, _preprocess)
    problems += found
    dims, found = _parse_dims(data.get("dims", {}), f"{root}dims")
    problems += found
    if problems:
        return None, problems
    return _built(root.rstrip(".") or "model spec", lambda: ModelSpec(
        name=data["name"], family=data["family"], inputs=inputs, outputs=outputs, profile=profile,
        preprocess=preprocess, postprocess=dict(data.get("postprocess", {})),
        description=data.get("description", ""), dims=dims))


def _parse_dims(data: Any, path: str) -> tuple[dict[str, ProfileRange], list[str]]:
    if not isinstance(data, Mapping):
        return {}, [f'{path}: expected an object like {{"height": {{"min": 12, "opt": 240, "max": 1024}}}}, '
                    f"got {type(data).__name__}"]
    dims, problems = {}, []
    for name, value in data.items():
        found = _parse_section(value, f"{path}.{name}", ProfileRange, lambda d: ProfileRange(**d))
        if found[0] is not None:
            dims[str(name)] = found[0]
        problems += found[1]
    return dims, problems


def _preprocess(data: Mapping[str, Any]) -> Preprocess:
    return Preprocess(**{**data, "resize": _enum_value(ResizeMode, data.get("resize", "stretch")),
                         "mean": tuple(data.get("mean", Preprocess.mean)),
                         "std": tuple(data.get("std", Preprocess.std))})


def _built(path: str, make: Any) -> tuple[Any, list[str]]:
    """``make()`` with its ConfigError (or the TypeError of a wrongly typed value) as problems at ``path``."""
    try:
        return make(), []
    except ConfigError as exc:
        return None, [f"{path}: {p}" for p in exc.problems] or [f"{path}: {exc.message}"]
    except (TypeError, ValueError) as exc:
        return None, [f"{path}: {exc}"]


def _parse_section(data: Any, path: str, cls: type, make: Any) -> tuple[Any, list[str]]:
    if not isinstance(data, Mapping):
        return None, [f"{path}: expected an object, got {type(data).__name__}"]
    problems = _key_problems(path + ".", data, cls)
    return (None, problems) if problems else _built(path, lambda: make(data))


def _parse_inputs(data: Any, path: str) -> tuple[tuple[TensorSpec, ...], list[str]]:
    if not isinstance(data, list) or not data:
        return (), [f'{path}: expected a non-empty list of {{"name", "shape", "dtype"}} objects, got {data!r}']
    inputs, problems = [], []
    for i, item in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: expected an object with name, shape and dtype, got {item!r}")
            continue
        found = _key_problems(where + ".", item, TensorSpec)
        if not isinstance(item.get("name", "x"), str) or not item.get("name", "x").strip():
            found.append(f"{where}.name: expected a non-empty string, got {item['name']!r}")
        shape = item.get("shape", [])
        if not isinstance(shape, list) or not all(_is_dim(d) for d in shape[1:]):
            found.append(f'{where}.shape: expected a list like ["batch", 3, 224, 224] (sizes >= 1), got {shape!r}')
        tensor, more = (None, found) if found else _built(
            where, lambda item=item: TensorSpec(item["name"], tuple(item["shape"]), item.get("dtype", "float32")))
        problems += more
        if tensor is not None:
            inputs.append(tensor)
    problems += _duplicate_problems(path, [t.name for t in inputs], "input")
    return tuple(inputs), problems


def _parse_outputs(data: Any, path: str) -> tuple[tuple[str, ...], list[str]]:
    if not isinstance(data, list) or not data or not all(isinstance(n, str) and n.strip() for n in data):
        return (), [f'{path}: expected a non-empty list of output names like ["logits"], got {data!r}']
    return tuple(data), _duplicate_problems(path, data, "output")


def _duplicate_problems(path: str, names: list[str], what: str) -> list[str]:
    twice = sorted({n for n in names if names.count(n) > 1})
    return [f"{path}: {what} names must be unique, {n!r} is given {names.count(n)} times" for n in twice]


def _is_dim(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def _key_problems(path: str, data: Mapping[str, Any], cls: type) -> list[str]:
    """Unknown and missing keys of ``data`` for dataclass ``cls``, named under ``path``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    unknown = [f"unknown key '{path}{k}' (known: {', '.join(fields)})" for k in sorted(map(str, data))
               if k not in fields]
    return unknown + [f"missing key '{path}{k}'" for k in required if k not in data]


def _enum_value(enum_cls: type[enum.Enum], value: Any) -> enum.Enum:
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_cls)
        raise ConfigError(f"{enum_cls.__name__} must be one of {allowed}, got {value!r}") from None


def _check_keys(what: str, data: Mapping[str, Any], cls: type) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a JSON object, got {type(data).__name__}")
    problems = _key_problems("", data, cls)
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
    weight: float | None  # None: a stage of a multi-stage pipeline (mtcnn), nothing is fused


@dataclass(frozen=True)
class EnsembleSpec:
    """Several exported models whose outputs are fused (e.g. the reid ensemble), or the stages of
    one pipeline in order (mtcnn: every weight None).

    Stored as ``<output-dir>/<name>/ensemble.json``; members are ordinary model artifacts.
    """

    name: str
    family: str
    members: tuple[EnsembleMember, ...]
    postprocess: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        weights = [m.weight for m in self.members]
        if self.members and all(w is None for w in weights):
            return
        if not self.members or None in weights or min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
            raise ConfigError(
                f"ensemble {self.name!r} needs members with weights >= 0 summing to 1, got {weights}"
            )

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(float(m.weight) for m in self.members if m.weight is not None)

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
            weight = item["weight"]
            members.append(EnsembleMember(str(item["model"]), None if weight is None else float(weight)))
        return cls(
            name=data["name"], family=data["family"], members=tuple(members),
            postprocess=dict(data.get("postprocess", {})), description=data.get("description", ""),
        )
