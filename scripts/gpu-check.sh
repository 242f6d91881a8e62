#!/usr/bin/env bash
# On a machine with a CUDA GPU: token-rm, FIGA and fine-grained PPO (HF, then vLLM rollouts) on the default
# SmolLM2 in bf16 for a few steps each; prints tokens/s, peak GPU memory and MFU (details in
# scripts/gpu_check.py). Needs the prepared model (`make model` or `redline models prepare`), a CUDA build of
# torch and, for the vLLM row, the gpu extra; nothing from a hub.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 300 "${PYTHON:-.venv/bin/python}" scripts/gpu_check.py "$@"
