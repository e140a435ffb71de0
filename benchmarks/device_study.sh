#!/usr/bin/env bash
# The ZFNet study's gpu preset on one device machine, in one command of at most 10 minutes:
#   1. correctness smoke test on the device (the ci preset end to end, and the deconvnet on
#      the device against the CPU);
#   2. throughput of each design at the preset, measured here, sizing the run's steps so
#      that every network (the 2×2 factorial × SEEDS seeds, and one 7×7/2 network without
#      renormalisation) trains within TRAIN_BUDGET seconds in all;
#   3. the study itself: SEEDS seeds per design (at least 3), JOBS networks training at
#      once on the one GPU, then the analysis; report under $OUT/study.
# Usage (device tool): bash benchmarks/device_study.sh   — writes $OUT/{smoke,study,timing.json}
# On a CPU, for the test: PRESET=ci DEVICE=cpu TRAIN_BUDGET=2 SMOKE_STEPS=2 SEEDS=2 JOBS=2 OUT=/tmp/x bash ...
# Extra arguments go to `vizcnn study` (e.g. --data /path/to/imagenet/train).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results}
PRESET=${PRESET:-gpu}
DEVICE=${DEVICE:-cuda}
TRAIN_BUDGET=${TRAIN_BUDGET:-300}
SEEDS=${SEEDS:-3}
JOBS=${JOBS:-4}
PY=${PYTHON:-python3}
if ! $PY -c "import vizcnn" 2>/dev/null; then
  $PY -m pip install -q -e . >/dev/null
fi
mkdir -p "$OUT"
start=$(date +%s)
$PY - "$DEVICE" <<'PY'
import sys, torch, vizcnn
device = torch.device(sys.argv[1])
model = vizcnn.load_model("zfnet", weights="random")
x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
ref = vizcnn.project(model, x, "conv3", channel=[1, 5])
got = vizcnn.project(model.to(device), x.to(device), "conv3", channel=[1, 5]).cpu()
err = float((got - ref).abs().max() / ref.abs().max())
print(f"smoke: deconvnet on {device} vs cpu, max relative difference {err:.2e}")
assert err < 1e-3, err
PY
vizcnn study zfnet --preset ci ${SMOKE_STEPS:+--steps "$SMOKE_STEPS"} --device "$DEVICE" --out "$OUT/smoke" --force \
  --json > "$OUT/smoke.json"
smoke_done=$(date +%s)
$PY -m benchmarks.study_throughput --preset "$PRESET" --device "$DEVICE" --budget "$TRAIN_BUDGET" --seeds "$SEEDS" \
  > "$OUT/throughput.json"
cat "$OUT/throughput.json"
steps=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['steps'])" "$OUT/throughput.json")
measured=$(date +%s)
vizcnn study zfnet --preset "$PRESET" --steps "$steps" --seeds "$SEEDS" --jobs "$JOBS" --device "$DEVICE" \
  --out "$OUT/study" --force "$@" 2> "$OUT/study.log" > "$OUT/study.md"
end=$(date +%s)
$PY - "$OUT" "$start" "$smoke_done" "$measured" "$end" "$steps" <<'PY'
import json, sys
out, start, smoke, measured, end, steps = sys.argv[1], *map(int, sys.argv[2:])
summary = json.load(open(f"{out}/study/summary.json"))
timing = {"smoke_s": smoke - start, "throughput_probe_s": measured - smoke, "study_s": end - measured,
          "total_s": end - start, "steps": steps, "throughput": json.load(open(f"{out}/throughput.json")),
          "study_wall_seconds": summary["wall_seconds"], "machine": summary["machine"]}
json.dump(timing, open(f"{out}/timing.json", "w"), indent=2)
print(json.dumps(timing, indent=2))
PY
