"""Handler of ``batchforge parity``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from batchforge.errors import UsageError
from batchforge.runtime.artifacts import Precision, write_json_atomic


def cmd_parity(args: argparse.Namespace) -> int:
    from batchforge.export.exporter import library_versions
    from batchforge.export.registry import ENSEMBLES, ZOO, known_names
    from batchforge.parity.gate import check_model, exit_code, verdict
    from batchforge.parity.report import SANITY, summary_lines, to_markdown, uninformative_line
    from batchforge.parity.session import ParitySession

    precisions = Precision.parse_list(args.precision)
    if args.all and args.models:
        raise UsageError("give model names or --all, not both")
    names = known_names() if args.all else list(args.models)
    if not names:
        raise UsageError("no model given: name one or more models, or pass --all")
    # members before ensembles, so an ensemble reuses its members' outputs
    names = sorted(names, key=lambda n: n in ENSEMBLES)
    if args.eval_size is not None and args.eval_size < 1:
        raise UsageError(f"--eval-size must be >= 1, got {args.eval_size}")
    session = ParitySession(args.output_dir, args.backend, threads=args.threads,
                            eval_size=args.eval_size, data=args.data, factories=args.factory)
    reports = []
    try:
        for precision in precisions:
            for name in names:
                report = check_model(session, name, precision)
                reports.append(report)
                print(summary_lines([report])[0], flush=True)
                if report.error is None and report.uninformative:
                    print(f"WARNING: {report.model} [{report.precision}] UNINFORMATIVE: {uninformative_line(report)}",
                          file=sys.stderr, flush=True)
    finally:
        session.close()
    code = exit_code(reports, args.allow_known_failures, args.strict)
    word = verdict(reports, code)
    if args.report:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"verdict": word, "exit_code": code, "strict": args.strict, "backend": args.backend,
                                 "precisions": [p.value for p in precisions],
                                 "eval_size": args.eval_size, "data": args.data, "versions": library_versions(),
                                 "zoo": sorted(ZOO), "reports": [r.as_dict() for r in reports]})
        path.with_suffix(".md").write_text(to_markdown(reports), encoding="utf-8")
        print(f"report: {path} and {path.with_suffix('.md')}")
    passed = sum(r.passed for r in reports)
    known = [r for r in reports if r.status == "KNOWN FAILURE"]
    uninformative = [r for r in reports if r.status == "UNINFORMATIVE"]
    print(f"parity {word}: {passed}/{len(reports)} model/precision runs passed"
          + (f", {len(known)} known failure(s) {'allowed' if args.allow_known_failures else 'counted'}"
             if known else "")
          + (f", {len(uninformative)} UNINFORMATIVE "
             + ("(failed: --strict)" if args.strict else "(not failed; --strict fails them)")
             if uninformative else ""))
    for r in reports:
        if r.status == "FAILED" or (r.known_failure and not args.allow_known_failures):
            for c in r.checks:
                if not c.passed and c.role != SANITY:
                    print(f"  FAIL {r.model} [{r.precision}] {c.name} = {c.value:.6g} "
                          f"(limit {c.limit.symbol} {c.limit.value:g}) {c.detail}")
    for r in reports:
        for c in r.uninformative if r.error is None else ():
            print(f"  UNINFORMATIVE {r.model} [{r.precision}] {c.name} = {c.value:.6g} "
                  f"(needs {c.limit.symbol} {c.limit.value:g}) {c.detail}")
    for r in known:
        print(f"  KNOWN {r.model} [{r.precision}]: {r.known_failure}")
    return code
