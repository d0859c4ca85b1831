"""Handlers of ``batchforge models``, ``export`` and ``samples``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from batchforge.errors import ConfigError, UsageError
from batchforge.families import get_family
from batchforge.memory import release_memory
from batchforge.runtime.artifacts import write_json_atomic
from batchforge.runtime.json_input import MAX_JSON_BYTES, strict_json
from batchforge.runtime.loading import ENSEMBLE_FILE
from batchforge.runtime.spec import ModelSpec, parse_model_spec


def cmd_models(args: argparse.Namespace) -> int:
    from batchforge.export.registry import ENSEMBLES, ZOO, load_zoo
    from batchforge.tolerances import TOLERANCES

    load_zoo()
    rows = []
    for name, entry in sorted(ZOO.items()):
        spec = entry.spec
        fp32 = TOLERANCES.get(spec.family, {})
        tiers = {p.value: {k: v.value for k, v in limits.items()} for p, limits in fp32.items()}
        rows.append({"name": name, "family": spec.family,
                     "inputs": {t.name: list(t.shape) for t in spec.inputs},
                     "outputs": list(spec.outputs),
                     "profile": [spec.profile.min, spec.profile.opt, spec.profile.max],
                     "dims": {d: [r.min, r.opt, r.max] for d, r in spec.dims.items()},
                     "description": spec.description, "tolerances": tiers})
    for name, ens in sorted(ENSEMBLES.items()):
        rows.append({"name": name, "family": ens.family, "ensemble": {m.model: m.weight for m in ens.members},
                     "description": ens.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':24} {'family':10} {'input':22} {'profile':10} description")
    for row in rows:
        if "ensemble" in row:
            members = " + ".join(f"{m} x{w}" if w is not None else m for m, w in row["ensemble"].items())
            members = members.replace(" + ", " -> ") if None in row["ensemble"].values() else members
            print(f"{row['name']:24} {row['family']:10} {'(ensemble)':22} {'':10} {members}")
            continue
        shape = "x".join(str(d) for d in next(iter(row["inputs"].values()))[1:])
        for dim, sizes in row["dims"].items():
            shape = shape.replace(dim, f"{dim}[{'/'.join(map(str, sizes))}]")
        profile = "/".join(map(str, row["profile"]))
        print(f"{row['name']:24} {row['family']:10} {shape:22} {profile:10} {row['description']}")
    print("\nprofile = min/opt/max batch; height[min/opt/max] = a dynamic dim's sizes. "
          "Default tolerances: `batchforge models --json`.")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from batchforge.export.registry import ZooEntry, expand_names, get_ensemble, get_model

    if args.factory or args.spec:
        if not (args.factory and args.spec):
            raise UsageError("a user model needs both --factory MODULE:FUNCTION and --spec FILE")
        if args.models or args.all:
            raise UsageError("give either zoo model names or --factory/--spec, not both")
        entries = [ZooEntry(_read_spec(args.spec), args.factory)]  # before torch: a bad spec fails fast
    else:
        names = expand_names(args.models, args.all)
        entries = [get_model(n) for n in names]
    from batchforge.export.exporter import export_model
    from batchforge.export.onnx_export import ExportOptions

    options = ExportOptions(opset=args.opset, trace_batch=args.trace_batch,
                            allow_fallback=not args.no_fallback)
    if args.weights and len(entries) != 1:
        raise UsageError(f"--weights applies to exactly one model, got {len(entries)}")
    for entry in entries:
        profile = entry.spec.profile.with_overrides(max=args.max_batch) if args.max_batch else None
        if profile is not None and profile.opt > profile.max:
            profile = profile.with_overrides(opt=profile.max)
        start = time.perf_counter()
        record = export_model(entry, args.output_dir, weights=args.weights, options=options,
                              profile=profile)
        worst = max(r["max_rel"] for r in record["checks"]["parity"])
        print(f"exported {entry.spec.name:24} {time.perf_counter() - start:6.1f}s  "
              f"{record['exporter']['name']}, opset {args.opset}, ONNX vs PyTorch max_rel {worst:.1e} "
              f"-> {Path(args.output_dir) / entry.spec.name / 'model.fp32.onnx'}", flush=True)
        exporter = record["exporter"]
        if exporter["fallback_reason"] is not None:
            log = Path(args.output_dir) / entry.spec.name / exporter["log"]
            print(f"warning: {entry.spec.name}: torch.export failed ({exporter['fallback_category']}): "
                  f"{exporter['fallback_reason']}; exported with the TorchScript fallback instead "
                  f"(torch's output and the full traceback: {log})", file=sys.stderr, flush=True)
        for warning in record["warnings"]:
            print(f"warning: {entry.spec.name}: {warning}", file=sys.stderr, flush=True)
        release_memory()  # the exporter's graphs and the module: the next model starts clean
    exported = {entry.spec.name for entry in entries}
    for name in (_all_ensembles() if args.all else _named_or_complete(args.models, exported)):
        ensemble = get_ensemble(name)
        if ensemble is not None:
            path = Path(args.output_dir) / name / ENSEMBLE_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, ensemble.to_dict())
            print(f"wrote ensemble {name} ({' + '.join(ensemble.member_names)}) -> {path}")
    return 0


def _named_or_complete(names: list[str], exported: set[str]) -> list[str]:
    """The ensembles named, then those whose members were all exported by this call (`export
    mtcnn_pnet mtcnn_rnet mtcnn_onet` makes `run mtcnn` work)."""
    from batchforge.export.registry import ENSEMBLES

    complete = [n for n, e in sorted(ENSEMBLES.items()) if n not in names and set(e.member_names) <= exported]
    return list(names) + complete


def _all_ensembles() -> list[str]:
    from batchforge.export.registry import ENSEMBLES, load_zoo

    load_zoo()
    return sorted(ENSEMBLES)


def _read_spec(path: str) -> ModelSpec:
    """The user's spec, validated as a whole before the export: everything parity and run will
    need (``parse_model_spec``, then the family's ``spec_problems``). Problems are printed one per
    line (``FILE: spec.PATH: ...``), then one ConfigError (exit 2) says how many."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_JSON_BYTES + 1)  # a sparse 10 GB "spec" is not read whole
    except OSError as exc:
        raise UsageError(f"cannot read spec file {path}: {exc.strerror}") from None
    data = strict_json(raw, f"spec file {path}")
    family = data.get("family") if isinstance(data, dict) else None
    if isinstance(family, str):
        try:
            get_family(family)
        except UsageError as exc:
            raise UsageError(f"spec file {path}: {exc.message}", hint="parity and run need one of them") from None
    spec, problems = parse_model_spec(data, root="spec.")
    if spec is not None:
        problems = get_family(spec.family).spec_problems(spec)
    if problems:
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        raise ConfigError(f"spec file {path} has {len(problems)} problem{'s' if len(problems) > 1 else ''} "
                          "(listed above); nothing was exported",
                          hint="fix them in the spec file; README 'Your own model' shows a complete one")
    assert spec is not None
    return spec


def cmd_samples(args: argparse.Namespace) -> int:
    from batchforge.export.samples import write_samples

    get_family(args.family)
    if args.count < 1:
        raise UsageError(f"--count must be >= 1, got {args.count}")
    paths = write_samples(args.family, args.out, args.count, args.seed)
    print(f"wrote {len(paths)} {args.family} samples to {args.out}")
    return 0
