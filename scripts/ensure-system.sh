#!/usr/bin/env bash
# Make sure Fashion-MNIST (Debian package dataset-fashion-mnist) is installed.
# As root, install it; otherwise say how to get it. Never fails the build by itself:
# the commands that need the data give a clear error when it is missing.
set -u
dir="${ADVDIM_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
if [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Fashion-MNIST: apt-get install -y dataset-fashion-mnist"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || echo "warning: could not install dataset-fashion-mnist; the Fashion-MNIST checks will report it missing"
  fi
else
  echo "note: Fashion-MNIST is missing; install it with 'sudo apt-get install dataset-fashion-mnist'" \
       "or point ADVDIM_FASHION_MNIST at a folder with the four idx .gz files"
fi
exit 0
