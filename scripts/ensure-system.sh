#!/usr/bin/env bash
# Make sure the system packages advdim uses are installed:
#   - Fashion-MNIST (Debian package dataset-fashion-mnist), the default real dataset;
#   - Chromium (Debian package chromium), used by the test that renders the HTML report headless.
# As root, install what is missing; otherwise say how to get it. Never fails the build by itself:
# the commands that need the data give a clear error when it is missing, and the rendering test
# skips (saying why) when there is no browser.
set -u

apt_install() {  # apt_install PACKAGE: quiet install, refreshing the package lists once if needed
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1 && return 0
  apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1
}

as_root=0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  as_root=1
fi

dir="${ADVDIM_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
if [ ! -f "$dir/train-images-idx3-ubyte.gz" ] || [ ! -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
  if [ "$as_root" = "1" ]; then
    echo "installing Fashion-MNIST: apt-get install -y dataset-fashion-mnist"
    apt_install dataset-fashion-mnist \
      || echo "warning: could not install dataset-fashion-mnist; the Fashion-MNIST checks will report it missing"
  else
    echo "note: Fashion-MNIST is missing; install it with 'sudo apt-get install dataset-fashion-mnist'" \
         "or point ADVDIM_FASHION_MNIST at a folder with the four idx .gz files"
  fi
fi

if [ ! -x /usr/bin/chromium ]; then
  if [ "$as_root" = "1" ]; then
    echo "installing Chromium (headless rendering test of the HTML report): apt-get install -y chromium"
    apt_install chromium || echo "warning: could not install chromium; the report rendering test will be skipped"
  else
    echo "note: Chromium is missing; the report rendering test is skipped until 'sudo apt-get install chromium'"
  fi
fi
exit 0
