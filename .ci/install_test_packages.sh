#!/usr/bin/env bash
# Debian packages the tests use: orthanc and orthanc-dicomweb (a real PACS for the DICOMweb round trip,
# Testing/test_io_dicomweb.py) and dicom3tools (dciodvfy, David Clunie's DICOM validator, for the SEG and Parametric
# Map outputs). A no-op where all are installed. As root (CI) or with password-less sudo it installs them from
# Debian's package index and fails loudly if that fails; elsewhere it says why not, and those tests skip.
set -u
have_all() {
    command -v Orthanc >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1 &&
        ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1
}
have_all && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_packages: no apt-get here; the Orthanc (DICOMweb) and dciodvfy tests will skip" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "install_test_packages: not root and no password-less sudo; install the Debian packages orthanc," \
         "orthanc-dicomweb and dicom3tools to run the Orthanc (DICOMweb) and dciodvfy tests, which will skip" >&2
    exit 0
fi
lock=()
command -v flock >/dev/null 2>&1 && lock=(flock /tmp/apt.lock)  # serialise with other apt users of the machine
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" "${lock[@]}" apt-get update -qq &&
    "${as_root[@]}" "${lock[@]}" apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb \
        dicom3tools >/dev/null
have_all || { echo "install_test_packages: installing orthanc, orthanc-dicomweb and dicom3tools failed" >&2; exit 1; }
