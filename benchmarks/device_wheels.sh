#!/usr/bin/env bash
# Download, here, the wheels the GPU device machine lacks (its image has torch 2.11, numpy, scipy, matplotlib, tqdm,
# safetensors; not MONAI, SimpleITK, pydicom, nibabel (which the MONAI-stock baseline reads NIfTI with) or isal (fast gzip)).
# They land in .whl/ (ignored by git) and travel with `carry: [".whl"]`; benchmarks/device_site.sh installs them
# there. SimpleITK's wheel alone is most of the 64 MiB a call may carry, so it travels unpacked and packed again
# with xz (about half the size of the wheel's zip).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
for spec in monai==1.6.1 SimpleITK==2.5.7 pydicom==3.0.2 nibabel==5.4.2 isal==1.9.1; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec"
done
for wheel in .whl/simpleitk-*.whl; do
  [ -e "$wheel" ] || continue
  unpacked=$(mktemp -d)
  python3 -m zipfile -e "$wheel" "$unpacked"
  name=$(basename "$wheel" | cut -d- -f1-2)
  tar -C "$unpacked" -cf - . | xz -T0 -6 > ".whl/$name.tar.xz"
  rm -rf "$unpacked" "$wheel"
done
ls -l .whl
du -cb $(git ls-files) .whl 2>/dev/null | tail -1 | awk '{printf "what a call carries: %.1f MiB of 64\n", $1 / 1048576}'
