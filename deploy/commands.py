"""Handlers of ``batchforge deploy triton`` and ``batchforge bundle``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from batchforge.deploy.artifacts import model_names
from batchforge.runtime.artifacts import ModelArtifacts, Precision


def cmd_deploy_triton(args: argparse.Namespace) -> int:
    from batchforge.deploy.triton import (
        InstanceKind,
        Platform,
        TritonOptions,
        check_folder_name,
        choose_source,
        graph_io,
        model_config,
        preferred_batch_sizes,
        write_model_repository,
    )

    options = TritonOptions(platform=Platform(args.platform), max_queue_delay_us=args.max_queue_delay_us,
                            instances=args.instances, instance_kind=InstanceKind(args.instance_kind))
    precision = Precision(args.precision)
    names = [check_folder_name(n) for n in model_names(args.output_dir, args.model)]
    sources = {name: choose_source(ModelArtifacts.at(args.output_dir, name), precision, options.platform)
               for name in names}  # every member verified before anything is written
    configs = {name: model_config(name, source, *graph_io(source.onnx_path), options)
               for name, source in sources.items()}
    for name, source in sources.items():
        folder = write_model_repository(Path(args.out), name, source, configs[name])
        print(f"{name}: {source.platform.value} ({precision.value}, max_batch_size {source.profile.max}, "
              f"preferred batch sizes {preferred_batch_sizes(source.profile)}) -> {folder}")
    if len(names) > 1 or names[0] != args.model:
        print(f"{args.model} is an ensemble: Triton serves its members; fuse their outputs on the client "
              "(batchforge.runtime.post.reid.fuse_embeddings with the ensemble's weights)")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from batchforge.deploy.bundle import BundleRequest, write_bundle

    request = BundleRequest(model=args.model, precision=Precision(args.precision), output_dir=Path(args.output_dir),
                            out=Path(args.out), infer_config=Path(args.infer_config) if args.infer_config else None,
                            parity_report=Path(args.parity_report) if args.parity_report else None)
    path, count, size = write_bundle(request)
    print(f"{args.model} ({request.precision.value}): bundle of {count} files, {size / 2**20:.2f} MiB, "
          f"every file in SHA256SUMS -> {path}")
    if request.parity_report is None:
        print("note: no --parity-report given: the bundle records no parity run", file=sys.stderr)
    print(f"run it with `batchforge run --bundle {path} --input ... --output results.jsonl`")
    return 0
