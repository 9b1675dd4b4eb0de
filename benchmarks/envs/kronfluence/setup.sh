#!/usr/bin/env bash
# Create the pinned kronfluence environment .bench-envs/kronfluence (idempotent).
# Called by benchmarks/make_envs.sh (`make bench-env`).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
ENV_DIR="$ROOT/.bench-envs/kronfluence"
PYTHON="${PYTHON:-python3.11}"

if [ -x "$ENV_DIR/bin/python" ] && "$ENV_DIR/bin/python" -c "import kronfluence, torch; assert torch.__version__.startswith('2.13.0')" 2>/dev/null; then
    echo "kronfluence env: up to date ($ENV_DIR)"
    exit 0
fi
echo "kronfluence env: creating $ENV_DIR"
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/pip" install --quiet --upgrade pip
# pip (not uv): on the project's machines this finds a local CPU wheel instead of a CUDA build.
"$ENV_DIR/bin/pip" install --quiet "torch==2.13.0"
"$ENV_DIR/bin/pip" install --quiet -r "$HERE/requirements.txt"
"$ENV_DIR/bin/python" -c "import kronfluence, torch; print('kronfluence env: kronfluence', kronfluence.__version__, 'torch', torch.__version__)"
