"""The optimisation profile of an engine: batch range from the spec, overridable, per-input shapes.

TensorRT serves exactly the batch range it was built for; the runtime refuses batches outside
it and pipelines chunk to its max. A min above 1 therefore makes small batches (and the last
chunk of a run) impossible, so it is allowed only when asked for explicitly.
"""

from __future__ import annotations

from batchforge.errors import ConfigError
from batchforge.runtime.manifest import InputProfile
from batchforge.runtime.spec import ModelSpec, ProfileRange


def derive_profile(spec: ModelSpec, *, min_batch: int | None = None, opt_batch: int | None = None,
                   max_batch: int | None = None) -> ProfileRange:
    """The spec's min/opt/max batch with the given overrides, validated.

    An override of max alone pulls opt down to it when the spec's opt would exceed it; an
    override of min alone lifts opt up to it. Explicit values that contradict each other are
    errors naming the options.

    Args:
        spec: the model spec (its ``profile`` is the default).
        min_batch, opt_batch, max_batch: ``--min-batch`` / ``--opt-batch`` / ``--max-batch``.
    Returns:
        The ProfileRange to build.
    Raises:
        ConfigError naming each bad option.
    """
    given = {"--min-batch": min_batch, "--opt-batch": opt_batch, "--max-batch": max_batch}
    problems = [f"{flag} must be an integer >= 1, got {value}" for flag, value in given.items()
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1)]
    if problems:
        raise ConfigError("invalid profile override", problems=problems)
    base = spec.profile
    low = base.min if min_batch is None else min_batch
    high = base.max if max_batch is None else max_batch
    opt = opt_batch if opt_batch is not None else min(max(base.opt, low), high)
    if not low <= opt <= high:
        problems.append(_order_problem(low, opt, high, min_batch, opt_batch, max_batch))
        raise ConfigError(f"invalid profile for {spec.name!r} (spec: {base.min}/{base.opt}/{base.max})",
                          problems=problems, hint="profiles need 1 <= min <= opt <= max")
    return ProfileRange(low, opt, high)


def _order_problem(low: int, opt: int, high: int, min_b: int | None, opt_b: int | None,
                   max_b: int | None) -> str:
    def said(flag: str, given: int | None, what: str, value: int) -> str:
        return f"{flag} {value}" if given is not None else f"the spec's {what} batch {value}"

    lo, op, hi = said("--min-batch", min_b, "min", low), said("--opt-batch", opt_b, "opt", opt), \
        said("--max-batch", max_b, "max", high)
    if low > high:
        return f"{lo} is above {hi}"
    return f"{op} is below {lo}" if opt < low else f"{op} is above {hi}"


def input_profiles(spec: ModelSpec, profile: ProfileRange) -> tuple[InputProfile, ...]:
    """min/opt/max shapes of every input: the batch from ``profile``, each named dim from the
    spec's ``dims`` (P-Net's height and width), the rest from the spec.

    Raises:
        ConfigError when a non-batch dim is symbolic without a range (TensorRT needs every dim of
        the profile set).
    """
    out = []
    for tensor in spec.inputs:
        low, opt, high = spec.input_shapes(tensor, profile)
        symbolic = [d for d in low[1:] if not isinstance(d, int)]
        if symbolic:
            raise ConfigError(
                f"input {tensor.name!r} of {spec.name!r} has symbolic dims {symbolic} besides the batch; "
                "a TensorRT profile needs them fixed or given a min/opt/max range",
                hint='give the spec concrete sizes, or ranges under "dims", and re-export')
        out.append(InputProfile(tensor.name, tensor.dtype, low, opt, high))  # type: ignore[arg-type]
    return tuple(out)
