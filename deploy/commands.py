"""Handlers of ``batchforge deploy triton`` and ``batchforge bundle``."""

from __future__ import annotations

import argparse
from pathlib import Path

from batchforge.errors import ArtifactError
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.loading import ensemble_spec


def model_names(output_dir: str, model: str) -> list[str]:
    """The model folders ``model`` stands for (an ensemble's members), each checked to exist."""
    ensemble = ensemble_spec(output_dir, model)
    names = list(ensemble.member_names) if ensemble else [model]
    for name in names:
        if not ModelArtifacts.at(output_dir, name).dir.is_dir():
            raise ArtifactError(f"no artifacts for model {name!r} under {Path(output_dir).resolve()}",
                                hint=f"create them with `batchforge export {name}` (see `batchforge models`)")
    return names


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
