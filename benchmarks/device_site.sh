# Sourced at the start of a device run: installs what benchmarks/device_wheels.sh put into .whl/ (wheels, and
# packages packed as .tar.xz) into /tmp/site and puts it and the repository on PYTHONPATH. SKIP_WHEELS=1 skips it.
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  mkdir -p /tmp/site
  if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "wheel install failed"; exit 1; }
  fi
  for packed in .whl/*.tar.xz; do
    [ -e "$packed" ] || continue
    tar -C /tmp/site -xJf "$packed" || { echo "unpacking $packed failed"; exit 1; }
  done
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
fi
