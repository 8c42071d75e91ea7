#!/usr/bin/env bash
# One virtual environment per peer, outside the repository (default /tmp/peers), each with the same
# onnxruntime, tokenizers and numpy as joules' .venv. Usage: benchmarks/peers/install.sh [DIR] [PEER...]
set -eu
DIR=${1:-/tmp/peers}; shift || true
PEERS=${*:-litserve mlserver bentoml ray}
PIN=$(/usr/bin/env bash -c "cd $(dirname "$0")/../.. && .venv/bin/python -c 'import onnxruntime, tokenizers, numpy; print(f\"onnxruntime=={onnxruntime.__version__} tokenizers=={tokenizers.__version__} numpy=={numpy.__version__}\")'")
for peer in $PEERS; do
  case $peer in
    bentoml) pkg=bentoml ;; ray) pkg="ray[serve]" ;; litserve) pkg=litserve ;; mlserver) pkg=mlserver ;;
    *) echo "unknown peer $peer"; exit 2 ;;
  esac
  python3 -m venv "$DIR/$peer"
  "$DIR/$peer/bin/pip" install -q --disable-pip-version-check "$pkg" $PIN
  echo "$peer: $("$DIR/$peer/bin/pip" list 2>/dev/null | grep -i -E "^($peer|ray) " | head -1)"
done
