#!/usr/bin/env bash
# The named benchmark suites of benchmarks/suites.yaml on the GPU machine, in one call:
#   bash benchmarks/gpu_suite.sh SUITE [SUITE ...]      (python3 benchmarks/run.py --list names them)
# Expects the wheels of ../shared/device/pack-wheels.sh plus tagcap's own in .whl/ (see
# benchmarks/README.md); writes JSON under $OUT (or /tmp/tagcap-bench-results), never into the checkout.
set -euo pipefail
results=${OUT:-/tmp/tagcap-bench-results}
mkdir -p "$results"
if [[ ! -f /tmp/site/.done ]]; then
  mkdir -p /tmp/site && tar xJf .whl/ray-trim.tar.xz -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $(ls .whl/*.whl | grep -v tagcap-)
  python3 -m compileall -q /tmp/site || true   # else ray.init takes 7 s instead of 2
  touch /tmp/site/.done
fi
# pack-wheels unzips Ray with Python's zipfile, which drops the executable bits.
chmod -R +x /tmp/site/ray/core/src/ray
rm -rf /tmp/site/tagcap /tmp/site/tagcap-*   # this checkout's tagcap, also on a machine kept warm
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/tagcap-*.whl
# An earlier tagcap for the base_code lever (caption_bench.py), where one is packed: the
# same run on the code of .whl/base/commit.txt, in the same start of the machine.
rm -rf /tmp/site-base
if compgen -G ".whl/base/tagcap-*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site-base .whl/base/tagcap-*.whl
  cp .whl/base/commit.txt /tmp/site-base/BASE_COMMIT 2>/dev/null || true
fi
# miniaudio built from its source for a CPU level (x86-64-v2: dr_flac's SSE4.1 code; v3:
# AVX2, BMI and LZCNT besides), where packed as .whl/flac-<level>/: the flac_<level> levers
# (caption_bench.py) put it ahead of PyPI's SSE2 build.
for built in .whl/flac-*/; do
  [[ -d "$built" ]] || continue
  level=$(basename "$built"); rm -rf "/tmp/site-$level"
  python3 -m pip install -q --no-index --no-deps --target "/tmp/site-$level" "$built"miniaudio-*.whl
done
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
cd /tmp   # import the installed tagcap, not the checkout's folders
here=$OLDPWD
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$results/gpu.txt"
# The suites named (benchmarks/suites.yaml); an unknown name runs nothing and exits 2.
exec python3 "$here/benchmarks/run.py" --results "$results" "$@"
