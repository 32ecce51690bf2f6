#!/usr/bin/env bash
# Installs every Debian package lowsync needs (build, tests, data, plots). Idempotent: when all
# packages are present it does nothing; otherwise one quiet apt-get update and one install.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  openmpi-bin libopenmpi-dev
  libdnnl-dev ocl-icd-opencl-dev opencl-c-headers
  libhdf5-openmpi-dev hdf5-tools
  libtrilinos-kokkos-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev libtomlplusplus-dev libfmt-dev libspdlog-dev zlib1g-dev nlohmann-json3-dev
  dataset-fashion-mnist fortunes
  python3 python3-matplotlib python3-numpy python3-h5py
  clang libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
