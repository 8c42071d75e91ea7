#!/usr/bin/env bash
# The peers comparison, whole, for a quiet machine, in one command (about 3 hours for five systems):
# builds each peer's virtual environment when it is missing (install.sh), then runs 5 interleaved
# rounds of 30 s runs (run.py's defaults) and prints the table with the spread over rounds.
#   JOULES_HOME=/path/with/spam benchmarks/peers/rerun.sh [run.py flags, e.g. --pin-client 0 --pin-server 1]
# Environment: VENVS (default /tmp/peers), SYSTEMS (default joules,litserve,mlserver,bentoml,ray), OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENVS=${VENVS:-/tmp/peers}
SYSTEMS=${SYSTEMS:-joules,litserve,mlserver,bentoml,ray}
OUT=${OUT:-benchmarks/results/peers-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
for s in ${SYSTEMS//,/ }; do
  if [ "$s" != joules ] && [ ! -x "$VENVS/$s/bin/python" ]; then
    bash benchmarks/peers/install.sh "$VENVS" "$s"
  fi
done
.venv/bin/python benchmarks/peers/run.py --venvs "$VENVS" --systems "$SYSTEMS" --out "$OUT" "$@"
echo "rows: $OUT (table again: .venv/bin/python benchmarks/peers/run.py table $OUT)"
