#!/usr/bin/env bash
# Sets up stylebatch on a fresh Debian/Ubuntu machine. Safe and quick to re-run.
#
#   scripts/setup.sh          ffmpeg, the sample clip, .venv/ with the worker, the operator and MPI
#   scripts/setup.sh --test   all of the above, plus test tools: Azurite (npm), pytest, kmock, Helm SDK,
#                             and for the rehearsal tier Debian's docker.io and debootstrap
#
# Afterwards .venv/bin/stylebatch is the CLI. TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# installs the same pinned torch without CUDA libraries (PyPI's Linux wheel carries them).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
with_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- system packages: only what is missing, so a re-run does not touch apt at all ---
need=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need+=(ffmpeg)
[ -f /usr/share/doc/opencv-doc/examples/data/Megamind.avi ] || need+=(opencv-doc)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# a C compiler: pip builds the CPU's kernels in C (setup.py: the instance norms, padded copies, frame conversions)
command -v cc >/dev/null && [ -f /usr/include/stdint.h ] || need+=(gcc libc6-dev)
if [ "$with_tests" = 1 ]; then
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
  # the rehearsal tier (tests/rehearsal): its own docker engine, and a Debian base image made locally
  command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || need+=(docker.io)
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
fi
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- Python: one virtual environment, torch pinned by constraints.txt ---
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
extras="worker,operator"
[ "$with_tests" = 1 ] && extras="$extras,test"
sources="$(cat pyproject.toml setup.py constraints.txt worker/stylebatch/*.[ch] | sha256sum | cut -c1-16)"
stamp=".venv/.stylebatch-$sources-$extras"
# the test extras include the plain ones: a plain set-up after `--test` installs nothing again
[ "$with_tests" = 0 ] && [ -f ".venv/.stylebatch-$sources-$extras,test" ] && stamp=".venv/.stylebatch-$sources-$extras,test"
if [ ! -f "$stamp" ]; then
  say "installing Python packages (.[${extras}], torch pinned in constraints.txt)"
  .venv/bin/python -m pip install -q --upgrade pip
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    # e.g. https://download.pytorch.org/whl/cpu: the same pinned version without the CUDA libraries
    .venv/bin/python -m pip install -q -c constraints.txt --index-url "$TORCH_INDEX_URL" torch
  fi
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
  rm -f .venv/.stylebatch-*
  touch "$stamp"
fi

# --- Azurite, the real Azure Storage emulator, for the blob tests ---
if [ "$with_tests" = 1 ] && [ ! -x .cache/azurite/node_modules/.bin/azurite-blob ]; then
  say "installing Azurite (npm)"
  mkdir -p .cache/azurite
  npm install --silent --no-audit --no-fund --prefix .cache/azurite azurite@3 >/dev/null
fi

# --- the sample clip: a real cartoon clip (opencv-doc) with a synthesized soundtrack ---
if [ ! -s samples/sample.mp4 ]; then
  say "making samples/sample.mp4"
  mkdir -p samples
  ffmpeg -v error -y -i /usr/share/doc/opencv-doc/examples/data/Megamind.avi \
    -f lavfi -i "aevalsrc=0.2*sin(2*PI*(220+110*floor(mod(t\,2)))*t)+0.1*sin(2*PI*330*t):s=48000:c=stereo" \
    -map 0:v -map 1:a -t 6 -c:v libx264 -pix_fmt yuv420p -crf 18 -c:a aac -b:a 128k -shortest \
    samples/sample.part.mp4
  mv samples/sample.part.mp4 samples/sample.mp4
fi

say "ready: .venv/bin/stylebatch"
