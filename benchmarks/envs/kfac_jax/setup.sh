#!/usr/bin/env bash
# Create the pinned kfac-jax environment .bench-envs/kfac_jax (idempotent).
# Called by benchmarks/make_envs.sh (`make bench-env`).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
ENV_DIR="$ROOT/.bench-envs/kfac_jax"
PYTHON="${PYTHON:-python3.11}"

if [ -x "$ENV_DIR/bin/python" ] && "$ENV_DIR/bin/python" -c "import kfac_jax, jax; assert jax.__version__ == '0.9.1'" 2>/dev/null; then
    echo "kfac_jax env: up to date ($ENV_DIR)"
    exit 0
fi
echo "kfac_jax env: creating $ENV_DIR"
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/pip" install --quiet --upgrade pip
"$ENV_DIR/bin/pip" install --quiet -r "$HERE/requirements.txt"
"$ENV_DIR/bin/python" -c "import kfac_jax, jax; print('kfac_jax env: kfac-jax', kfac_jax.__version__, 'jax', jax.__version__)"
