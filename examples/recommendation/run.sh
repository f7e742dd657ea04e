#!/usr/bin/env bash
# The recommendation example end to end (examples/recommendation/README.md): data, training, the frozen baseline.
#   examples/recommendation/run.sh                     # the whole of MovieLens-100K
#   USERS=60 examples/recommendation/run.sh --set training.epochs=1   # a small slice; options go to adaptune train
# OUT (default runs/recommendation) holds data/, lora/ (the run) and lora/quality_records.json; RECORD=1 also
# writes the records to benchmarks/results/quality.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/recommendation}
.venv/bin/python examples/recommendation/prepare_data.py --out "$OUT/data" ${USERS:+--users "$USERS"}
.venv/bin/adaptune train examples/recommendation/config.yaml --overwrite \
  --set "data.train=$OUT/data/train.jsonl" --set "data.dev=$OUT/data/dev.jsonl" \
  --set "data.test=$OUT/data/test.jsonl" --set "training.output_dir=$OUT/lora" "$@"
.venv/bin/python examples/recommendation/report.py "$OUT/lora" ${RECORD:+--record}
