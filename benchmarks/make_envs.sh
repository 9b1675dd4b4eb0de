#!/usr/bin/env bash
# Create the pinned peer environments that cannot share our locked JAX (DESIGN.md, "Benchmarks
# contract"): one benchmarks/envs/<peer>/setup.sh each, idempotent, into .bench-envs/<peer>.
set -euo pipefail
cd "$(dirname "$0")/.."
for setup in benchmarks/envs/*/setup.sh; do
  bash "$setup"
done
