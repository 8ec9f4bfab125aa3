#!/usr/bin/env bash
# Every GPU measurement of issue 7 in one call on the device machine (one H100, 16 cores):
#   bash benchmarks/gpu_suite.sh caption|pretrain|pipeline|ceilings|levers_gpu|levers_pipeline|final4|final5|final6|inflight_sweep|disk_none|start|host_input|levers7|levers8|final7|final8|none7|levers9|final9|levers10|final10|final11|levers12|final12|long13|count13|long14|actor15|busy16|fresh17|decode18|gputests|inflight|final|memory|scaling|pretrain_scaling|quick
# Expects the wheels of ../shared/device/pack-wheels.sh plus tagcap's own in .whl/ (see
# benchmarks/README.md); writes JSON under $OUT (or benchmarks/results) and logs beside it.
set -euo pipefail
results=${OUT:-benchmarks/results}
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
# miniaudio built for the CPU generation, for the native_flac lever, where one is packed
# (benchmarks/README.md says how it is built).
rm -rf /tmp/site-flac
if compgen -G ".whl/flac/miniaudio-*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site-flac .whl/flac/miniaudio-*.whl
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
cd /tmp   # import the installed tagcap, not the checkout's folders
here=$OLDPWD
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$results/gpu.txt"
for what in "$@"; do
  case "$what" in
    caption) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" all 2>&1 | tee "$results/caption.log" ;;
    pretrain) python3 "$here/benchmarks/pretrain_bench.py" --work /tmp/tagcap-bench --batch 256 \
               --steps 40 --warmup 10 --text-shape "$here/.bench_text" --results "$results" 2>&1 \
               | tee "$results/pretrain.log" ;;
    pipeline) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-pipeline \
               decode e2e_full e2e_none e2e_inflight 2>&1 | tee "$results/caption-pipeline.log" ;;
    ceilings) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-ceilings \
               ceiling baseline e2e_full 2>&1 | tee "$results/caption-ceilings.log" ;;
    final) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-final \
               decode e2e_full e2e_none memory baseline 2>&1 | tee "$results/caption-final.log" ;;
    memory) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats 1 --results "$results" --name caption-memory \
               e2e_full memory 2>&1 | tee "$results/caption-memory.log" ;;
    scaling) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats 1 --results "$results" --name caption-scaling \
               decode e2e_scaling 2>&1 | tee "$results/caption-scaling.log" ;;
    pretrain_scaling) python3 "$here/benchmarks/pretrain_scaling.py" --work /tmp/tagcap-bench --batch 256 \
               --steps 40 --warmup 10 --text-shape "$here/.bench_text" --results "$results" 2>&1 \
               | tee "$results/pretrain-scaling.log" ;;
    levers_gpu) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-levers-gpu \
               ceiling decode baseline 2>&1 | tee "$results/caption-levers-gpu.log" ;;
    levers_pipeline) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-levers-pipeline \
               e2e_full e2e_decode_threads 2>&1 | tee "$results/caption-levers-pipeline.log"
             mkdir -p "$results/timelines" && cp /tmp/tagcap-bench/timeline-*.json "$results/timelines/" ;;
    final4) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-final4 \
               decode e2e_full e2e_decode_threads memory baseline 2>&1 | tee "$results/caption-final4.log"
             mkdir -p "$results/timelines" && cp /tmp/tagcap-bench/timeline-*.json "$results/timelines/" ;;
    inflight) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats 1 --inflight 48 --results "$results" --name caption-inflight \
               e2e_inflight e2e_full 2>&1 | tee "$results/caption-inflight.log" ;;
    final5) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-3}" --results "$results" --name caption-final5 \
               decode e2e_full baseline baseline_fast_decoder 2>&1 | tee "$results/caption-final5.log"
             mkdir -p "$results/timelines" && cp /tmp/tagcap-bench/timeline-*.json "$results/timelines/" ;;
    final6) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-3}" --results "$results" --name caption-final6 \
               decode e2e_full e2e_nice0 2>&1 | tee "$results/caption-final6.log"
             mkdir -p "$results/timelines" && cp /tmp/tagcap-bench/timeline-*.json "$results/timelines/" ;;
    inflight_sweep) for n in ${INFLIGHT:-48 30 64 48 30 64}; do
               python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
                 --repeats 1 --inflight "$n" --results "$results" --name "caption-inflight$n" \
                 e2e_inflight 2>&1 | tee -a "$results/caption-inflight-sweep.log"
             done ;;
    disk_none) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-disk-none \
               disk e2e_full e2e_none 2>&1 | tee "$results/caption-disk-none.log"
             mkdir -p "$results/timelines" && cp /tmp/tagcap-bench/timeline-*.json "$results/timelines/" ;;
    host_input) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-3}" --results "$results" --name caption-host-input \
               host_input decode 2>&1 | tee "$results/caption-host-input.log" ;;
    levers7) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-3}" --results "$results" --name caption-levers7 \
               e2e_levers 2>&1 | tee "$results/caption-levers7.log" ;;
    levers8) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-3}" --results "$results" --name caption-levers8 \
               --levers full,old_resources,no_start_allowance,pageable_h2d \
               e2e_levers 2>&1 | tee "$results/caption-levers8.log" ;;
    final7) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-final7 \
               e2e_full e2e_none memory baseline 2>&1 | tee "$results/caption-final7.log" ;;
    final8) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-1}" --results "$results" --name caption-final8 \
               decode e2e_full 2>&1 | tee "$results/caption-final8.log" ;;
    levers9) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-levers9 \
               --levers full,no_retain,pinned_h2d decode e2e_levers 2>&1 | tee "$results/caption-levers9.log" ;;
    final9) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-1}" --long-times "${LONG_TIMES:-3}" --results "$results" --name caption-final9 \
               e2e_long e2e_full memory baseline 2>&1 | tee "$results/caption-final9.log" ;;
    levers10) python3 "$here/benchmarks/prepare_bench.py" --work /tmp/tagcap-bench --repeats "${REPEATS:-3}" \
               --results "$results" 2>&1 | tee "$results/prepare.log"
             python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-levers10 \
               --levers full,registered_h2d host_input e2e_levers 2>&1 | tee "$results/caption-levers10.log" ;;
    final10) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-1}" --long-times "${LONG_TIMES:-3}" --results "$results" --name caption-final10 \
               e2e_long e2e_full memory baseline 2>&1 | tee "$results/caption-final10.log" ;;
    final11) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --long-times "${LONG_TIMES:-3}" --results "$results" --name caption-final11 \
               --levers full,half_store decode e2e_levers e2e_long baseline 2>&1 | tee "$results/caption-final11.log" ;;
    levers12) python3 "$here/benchmarks/prepare_bench.py" --work /tmp/tagcap-bench --repeats "${REPEATS:-2}" \
               --units 4 --procs 1,16 --settings retain,decode_only --results "$results" 2>&1 | tee "$results/prepare.log"
             python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --long-times "${LONG_TIMES:-3}" --long-levers "${LONG_LEVERS:-full,cuda_auto_sync,more_slots}" \
               --results "$results" --name caption-levers12 e2e_long 2>&1 | tee "$results/caption-levers12.log" ;;
    final12) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-levers12c \
               --levers "${LEVERS:-full,cuda_auto_sync}" e2e_levers 2>&1 | tee "$results/caption-levers12c.log"
             python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats 1 --long-times "${LONG_TIMES:-3}" --long-levers "${LONG_LEVERS:-full,more_slots}" \
               --results "$results" --name caption-final12 decode e2e_long baseline 2>&1 \
               | tee "$results/caption-final12.log"
             python3 "$here/benchmarks/prepare_bench.py" --work /tmp/tagcap-bench --repeats 1 \
               --units 4 --procs 1,16 --settings retain,decode_only --results "$results" 2>&1 | tee "$results/prepare.log" ;;
    long13) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --long-times 3 --long-levers full,cuda_auto_sync --results "$results" --name caption-long13a \
               e2e_long 2>&1 | tee "$results/caption-long13a.log"
             python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --long-times 3 --long-levers full --results "$results" --name caption-long13b \
               e2e_long 2>&1 | tee "$results/caption-long13b.log" ;;
    count13) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-1}" --results "$results" --name caption-count13 \
               e2e_full 2>&1 | tee "$results/caption-count13.log" ;;
    long14) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-1}" --long-times 3 --long-levers "${LONG_LEVERS:-full,base_code}" --long-repeats "${LONG_REPEATS:-2}" \
               --results "$results" --name "caption-long14${NAME_SUFFIX:-}" ${WHAT:-e2e_long} 2>&1 \
               | tee "$results/caption-long14${NAME_SUFFIX:-}.log" ;;
    decode18) # The decode ceiling with PyPI's dr_flac build and with one built for the CPU generation.
             for r in 1 2; do
               python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
                 --repeats 1 --results "$results" --name caption-decode18 decode 2>&1 | tee -a "$results/caption-decode18.log"
               PYTHONPATH=/tmp/site-flac:/tmp/site python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench \
                 --clips 20480 --repeats 1 --results "$results" --name caption-decode18-flac decode 2>&1 \
                 | tee -a "$results/caption-decode18-flac.log"
             done ;;
    gputests) # The tests that need a GPU (skipped on CI), with the suites they live in.
             python3 -m pip install -q --no-index --no-deps --target /tmp/site-test "$here"/.whl/test/*.whl
             rm -rf /tmp/gpu-tests && mkdir -p /tmp/gpu-tests && cp -r "$here/tests" /tmp/gpu-tests/
             (cd /tmp/gpu-tests && PYTHONPATH=/tmp/site:/tmp/site-test python3 -m pytest -q -p no:cacheprovider \
                tests/test_audio.py tests/test_cuda_runtime.py tests/test_captioner_model.py) 2>&1 | tail -30 \
                | tee "$results/gpu-tests.log" || true ;;   # reported, and the benchmarks still run
    fresh17) # The captioner on fresh pages with this code and .whl/base's.
             python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-3}" --results "$results" --name caption-fresh17 \
               host_input_fresh 2>&1 | tee "$results/caption-fresh17.log"
             PYTHONPATH=/tmp/site-base:/tmp/site python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench \
               --clips 20480 --repeats "${REPEATS:-3}" --results "$results" --name caption-fresh17-base \
               host_input_fresh 2>&1 | tee "$results/caption-fresh17-base.log" ;;
    busy16) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-3}" --results "$results" --name caption-busy16 \
               host_input_busy 2>&1 | tee "$results/caption-busy16.log" ;;
    actor15) python3 "$here/benchmarks/actor_start_bench.py" --work /tmp/tagcap-bench --busy "${BUSY:-16}" \
               --repeats "${REPEATS:-5}" --results "$results" 2>&1 | tee "$results/actor-start.log" ;;
    none7) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-none7 \
               e2e_none baseline 2>&1 | tee "$results/caption-none7.log" ;;
    start) python3 "$here/benchmarks/actor_start.py" --work /tmp/tagcap-bench --repeats "${REPEATS:-3}" \
               --results "$results" 2>&1 | tee "$results/actor-start.log" ;;
    quick) python3 "$here/benchmarks/caption_bench.py" --work /tmp/tagcap-bench --clips 20480 \
               --repeats "${REPEATS:-2}" --results "$results" --name caption-quick disk e2e_none e2e 2>&1 \
               | tee "$results/caption-quick.log" ;;
  esac
done
