#!/usr/bin/env bash
# Orthanc and its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb) for the PACS round-trip tests
# (Testing/test_io_dicomweb.py). A no-op where both are installed. As root (CI) or with password-less sudo it installs
# them from Debian's package index and fails loudly if that fails; elsewhere it says why not, and those tests skip.
set -u
have_orthanc() {
    command -v Orthanc >/dev/null 2>&1 &&
        ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1
}
have_orthanc && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_orthanc: no apt-get here; the Orthanc (DICOMweb) tests will skip" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "install_orthanc: not root and no password-less sudo; install the Debian packages orthanc and" \
         "orthanc-dicomweb to run the Orthanc (DICOMweb) tests, which will skip" >&2
    exit 0
fi
lock=()
command -v flock >/dev/null 2>&1 && lock=(flock /tmp/apt.lock)  # serialise with other apt users of the machine
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" "${lock[@]}" apt-get update -qq &&
    "${as_root[@]}" "${lock[@]}" apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb >/dev/null
have_orthanc || { echo "install_orthanc: installing orthanc and orthanc-dicomweb failed" >&2; exit 1; }
