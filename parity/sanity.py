"""Does the FP32 reference respond to its input? Checks on the reference outputs alone.

An engine that agrees with a reference giving every item the same output has shown nothing:
issue #27 met an untrained torchvision shufflenet_v2 whose logits spread 1e-6 over 16
photographs (pairwise cosine 1.00000) and passed int8 at cosine 1.0. Each check here has role
``sanity``: failing it marks the run UNINFORMATIVE (a WARNING, exit 0; exit 1 with
``parity --strict``), never FAILED, since the engine may well be right. Limits:
batchforge/tolerances.py ``TENSORS_SANITY``.

- ``sanity_item_spread[o]``: the largest std across items of any one value, over the output's
  largest |value| (0 for a constant function);
- ``sanity_identical_pairs[o]``: the share of item pairs whose outputs differ by at most the
  fp32 raw_max_rel tier (relative to the output's largest |value|), the first pair named;
- ``sanity_map_spread[o]`` (outputs of several values per item): the largest range within one
  item over the output's largest |value| (a map or vector constant in every item says nothing);
- ``sanity_classes[o]`` (``logits`` / ``probabilities``): distinct argmax classes over the items.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from batchforge.parity.report import SANITY, Check, source_name
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.post.tensors import OutputKind
from batchforge.tolerances import TENSORS_SANITY, limits_for

PAIR_ITEMS = 64  # pairs among the first 64 items (2,016): enough to see a constant function
COLUMNS = 1 << 16  # values per chunk of the spread (float64 work arrays of items x 65,536)
IDENTICAL_REL = limits_for("tensors", Precision.FP32)["raw_max_rel"].value


def sanity_checks(name: str, ref: np.ndarray, kind: OutputKind, sources: Sequence[str]) -> list[Check]:
    """The checks of the module docstring for one output (none for fewer than two items)."""
    items = len(ref)
    if items < 2 or ref.size == 0:
        return []
    rows = ref.reshape(items, -1)  # as given: a float64 copy of a large map set would double its memory
    scale = float(np.max(np.abs(rows)))
    unit = scale if scale > 0 else 1.0
    spread = max(float(rows[:, start:start + COLUMNS].astype(np.float64).std(axis=0).max())
                 for start in range(0, rows.shape[1], COLUMNS)) / unit
    checks = [Check(f"sanity_item_spread[{name}]", spread, TENSORS_SANITY["item_spread"],
                    f"largest std across {items} items of one of {rows.shape[1]} values, over the output's "
                    f"largest |value| {scale:.3g}", SANITY)]
    pairs = list(combinations(range(min(items, PAIR_ITEMS)), 2))
    same = [(a, b) for a, b in pairs
            if float(np.max(np.abs(rows[a].astype(np.float64) - rows[b]))) <= IDENTICAL_REL * unit]
    first = f"; e.g. {source_name(sources[same[0][0]])} and {source_name(sources[same[0][1]])}" if same else ""
    checks.append(Check(f"sanity_identical_pairs[{name}]", len(same) / len(pairs), TENSORS_SANITY["identical_pairs"],
                        f"{len(same)} of {len(pairs)} item pairs within {IDENTICAL_REL:g} of the output's largest "
                        f"|value|{first}", SANITY))
    if rows.shape[1] > 1:
        within = (rows.max(axis=1).astype(np.float64) - rows.min(axis=1)) / unit
        best = int(np.argmax(within))
        checks.append(Check(f"sanity_map_spread[{name}]", float(within[best]), TENSORS_SANITY["map_spread"],
                            f"largest range within one item ({source_name(sources[best])}) over the output's "
                            f"largest |value|; {int(np.sum(within < TENSORS_SANITY['map_spread'].value))} of "
                            f"{items} items nearly constant", SANITY))
    if kind.is_scores and ref.ndim > 1 and ref.shape[-1] > 1:
        top = np.argmax(ref.reshape(-1, ref.shape[-1]), axis=1)
        classes, counts = np.unique(top, return_counts=True)
        common = int(np.argmax(counts))
        checks.append(Check(f"sanity_classes[{name}]", float(len(classes)), TENSORS_SANITY["classes"],
                            f"{len(classes)} distinct argmax classes over {len(top)} rows of {ref.shape[-1]}; "
                            f"class {int(classes[common])} on {int(counts[common])} rows", SANITY))
    return checks
