#!/usr/bin/env bash
# Prepare a GPU check (CI never runs this): copy what .ci/gpu_check.sh reads into .gpudata/ (ignored
# by git) from ../shared/data, small enough to travel with the working tree to a machine that has a
# GPU but not ../shared: MNIST, the CIFAR ResNet weights, and 400 train / 100 test images per class
# of cifar10-jpeg (about 34 MB in all).
set -eu  # (no pipefail: head closes the pipe of find | sort early)
cd "$(dirname "$0")/.."
src=${ADAPTIVE_DATA:-../shared/data}
[ -d "$src/mnist" ] || { echo "no data at $src: set ADAPTIVE_DATA" >&2; exit 1; }
rm -rf .gpudata && mkdir -p .gpudata/shared/data .gpudata/cifar/cifar10-jpeg
cp -r "$src/mnist" "$src/resnet-cifar10" "$src/README.md" .gpudata/shared/data/
for split in train test; do
  n=$([ "$split" = train ] && echo 400 || echo 100)
  for c in "$src/cifar10-jpeg/$split"/*/; do
    c=$(basename "$c"); mkdir -p ".gpudata/cifar/cifar10-jpeg/$split/$c"
    find "$src/cifar10-jpeg/$split/$c" -name '*.jpg' | sort | head -n "$n" | xargs cp -t ".gpudata/cifar/cifar10-jpeg/$split/$c/"
  done
done
du -sh .gpudata
