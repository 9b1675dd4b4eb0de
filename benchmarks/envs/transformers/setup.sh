#!/usr/bin/env bash
# Create the pinned PyTorch/transformers environment .bench-envs/transformers (idempotent), the
# peer of benchmarks/lm_backends.py. Called by benchmarks/make_envs.sh (`make bench-env`).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
ENV_DIR="$ROOT/.bench-envs/transformers"
PYTHON="${PYTHON:-python3.11}"

if [ -x "$ENV_DIR/bin/python" ] && "$ENV_DIR/bin/python" -c "import transformers, torch; assert torch.__version__.startswith('2.13.0')" 2>/dev/null; then
    echo "transformers env: up to date ($ENV_DIR)"
    exit 0
fi
echo "transformers env: creating $ENV_DIR"
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/pip" install --quiet --upgrade pip
"$ENV_DIR/bin/pip" install --quiet "torch==2.13.0"
"$ENV_DIR/bin/pip" install --quiet -r "$HERE/requirements.txt"
"$ENV_DIR/bin/python" -c "import transformers, torch; print('transformers env: transformers', transformers.__version__, 'torch', torch.__version__)"
