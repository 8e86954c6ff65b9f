#!/bin/bash
# The accelerator figures issues 11 (elastic execution) and 14 (speed)
# still need, prepared so that a task lent a GPU spends its short device
# time measuring. Three parts, each under the device tool's 600 s a call
# (the time limits of their steps add up to 400 s, or 600 with the
# fallback below; 430 s; 400 s):
#   bash experiments/gpu_checks.sh speed     # issue 14: the S/16 pair,
#                                            # its ops, the reader's top-k
#                                            # (not in `all`)
#   bash experiments/gpu_checks.sh elastic   # issue 11
#   bash experiments/gpu_checks.sh ablate    # issue 14: the S/16 pair in
#                                            # float32, and with XLA's
#                                            # attention
#   bash experiments/gpu_checks.sh flags     # issue 14: ViT-S/16 under
#                                            # XLA flags, the global norm
#                                            # A/B (not in `all`; 600 s
#                                            # of limits)
#   bash experiments/gpu_checks.sh ab        # issue 14: A/Bs in one
#                                            # process each: the reading
#                                            # scan unrolled, three XLA
#                                            # options (not in `all`;
#                                            # 510 s of limits)
# or all three in that order in one call with `all` and BUDGET=S (seconds
# from the script's start), which shortens or skips the later steps so
# that the script ends inside the call: `BUDGET=550 bash
# experiments/gpu_checks.sh all` in a call of 580 s. The first lent GPU
# (2026-12-04, tree at 7f3a12a, the same order) ran, in seconds,
# throughput (with its trace) 112, reader_ops 10, elastic_s16 140,
# parity_train 53, elastic_parity 31 and 39, the XLA-attention throughput
# 151 and 160; the machine's start took about 45 s more. The second
# (tree at 9edf403), `speed` with BUDGET=330: throughput 116,
# throughput_ops 120, reader_ops 10. The third (tree at 29d144b),
# `flags` with BUDGET=500: the six flags_* steps 56-74 s each,
# global_norm_ab 103 s, 485 s in all.
#
# Set-up, once, in the checkout (../shared/docs/gpu.md): the stand-in
# tensorflow module and the wheels the GPU image lacks,
#   mkdir -p .gpu_tools && cp -r ../shared/tools/gpu/. .gpu_tools/
#   printf '/.gpu_tools/\n/.whl/\n' >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0 clu==0.0.12
# then run a part through the device tool with carry [".gpu_tools", ".whl"].
# Every result file goes to $OUT (the device tool's folder, emptied before
# each call; default experiments/results), named after the device kind
# (throughput_nvidia_h200.txt and so on, as `experiments/throughput.py
# --save` names its file), the command on its first line: 8 files at most
# from `all`, the tool's limit. SMOKE=1 runs the same steps on tiny
# settings into /tmp/gpu_checks_smoke (a check of the command lines on a
# CPU, not a measurement), rehearsed with the GPU image's packages and
# nothing more (a venv of Python 3.12.1, jax/jaxlib 0.11.2, flax 0.12.10,
# optax 0.2.8, orbax-checkpoint 0.12.8, numpy, matplotlib, tensorboard; no
# tensorflow, tfds or ml_collections; the set-up above; `PATH=/tmp/gpuimg/
# bin:$PATH SMOKE=1 BUDGET=550 bash experiments/gpu_checks.sh all`): on
# 2026-12-04, before the commit that adds this line, every step exited 0,
# 8 files in 111 s on a 2-core CPU, and `speed` alone in 44 s.
#
# On the H200 the cuDNN attention that `--attention=auto` takes in bfloat16
# passed jax's checks (throughput_nvidia_h200.txt); if the throughput step
# fails there, the speed part runs it again with --attention=xla (its own
# 200 s). XLA runs most of a GPU train step as command buffers (CUDA
# graphs), which a trace times as one op (93% of the ViT-S/16 step's op
# time in one, same file), so the op tables come from a second, shorter
# run with them off, its timings the program's without them.
set -u
PART=${1:-all}
case "$PART" in
  speed|elastic|all|ablate|flags|ab) ;;
  *) echo "usage: $0 speed|elastic|all|ablate|flags|ab (got '$PART')" >&2
     exit 2 ;;
esac
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  OUT=${OUT:-/tmp/gpu_checks_smoke}
else
  OUT=${OUT:-experiments/results}
fi
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.gpu_tools/stubs:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "$SMOKE" = 1 ]; then
  BATCH=4; EXAMPLES=8; CHUNK=2; REPEATS=1; READER_BATCH=8
  S16=configs/imagenet/adatape.py:tiny
  VIT=configs/imagenet/vit.py:tiny
  PARITY=configs/parity/adatape.py:tiny
  SPECS=(--spec=configs/imagenet/vit.py:tiny
    --spec=configs/imagenet/adatape.py:tiny,bank=input)
  TRAIN=(--config.total_steps=4)
else
  # The S/16 pair of experiments/throughput.py (its default specs).
  BATCH=256; EXAMPLES=1024; CHUNK=64; REPEATS=11; READER_BATCH=1024
  S16=configs/imagenet/adatape.py:variant=S/16,bank=input
  VIT=configs/imagenet/vit.py:variant=S/16
  PARITY=configs/parity/adatape.py
  SPECS=()
  TRAIN=()
fi
failed=0
last=0

# BUDGET=S (seconds from the script's start, 0 for none) shortens a step's
# limit to what is left of it and skips a step with under 30 s left, so
# that the script ends inside the device call that runs it.
BUDGET=${BUDGET:-0}
timings=()

# step NAME SECONDS COMMAND...: runs it under a time limit, keeps going.
step() {
  local name=$1 limit=$2
  shift 2
  if [ "$BUDGET" -gt 0 ]; then
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 30 ]; then
      echo "== $name skipped: ${left} s of BUDGET=$BUDGET left"
      timings+=("$name skipped")
      last=124
      failed=1
      return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  echo "== $name (limit ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v "^W0000\|^I0000" | tail -25
  local code=${PIPESTATUS[0]}
  last=$code
  timings+=("$name $((SECONDS - start)) s (exit $code)")
  if [ "$code" != 0 ]; then
    echo "== $name failed (exit $code)"
    failed=1
  fi
}

python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
KIND=$(python3 -c "import re, jax
kind = jax.devices()[0].device_kind.lower()
print(re.sub('[^a-z0-9]+', '_', kind).strip('_'))") || exit 1
if [ "$PART" = speed ] || [ "$PART" = all ]; then
# Issue 14: bfloat16 with the fused attention, the S/16 pair at batch 256
# (targets: ViT >= 8000 train img/s, AdaTape >= 0.9 x ViT, ViT inference
# >= 25000), then where the train steps' time goes, then what the reader's
# top-k costs there.
ATTENTION=auto
step throughput 200 python3 -m experiments.throughput --dtype=bfloat16 \
  --attention=$ATTENTION --batch=$BATCH --repeats=10 \
  ${SPECS[@]+"${SPECS[@]}"} --out="$OUT/throughput_${KIND}.txt"
if [ "$last" != 0 ]; then
  # The same without cuDNN, so that one call still brings the other
  # figures back (a cuDNN refusal fails within the first compile).
  ATTENTION=xla
  step throughput_xla 200 python3 -m experiments.throughput \
    --dtype=bfloat16 --attention=$ATTENTION --batch=$BATCH --repeats=10 \
    ${SPECS[@]+"${SPECS[@]}"} --out="$OUT/throughput_${KIND}_xla.txt"
fi
# --profile: each train step's XLA ops by time, and by the part of the
# model they compute, readable without TensorBoard.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" \
  step throughput_ops 140 python3 -m experiments.throughput \
  --dtype=bfloat16 --attention=$ATTENTION --batch=$BATCH --repeats=3 \
  ${SPECS[@]+"${SPECS[@]}"} --profile=/tmp/gpu_checks_profile \
  --profile_top=25 --out="$OUT/throughput_${KIND}_ops.txt"
if [ "$PART" = speed ]; then
  # Left out of `all` (its 8 files are the tool's limit): this reader's
  # figures are reader_ops_nvidia_h200.txt.
  step reader_ops 60 python3 -m experiments.reader_ops \
    --batch=$READER_BATCH --repeats=$REPEATS \
    --out="$OUT/reader_ops_${KIND}.txt"
fi
fi
if [ "$PART" = elastic ] || [ "$PART" = all ]; then
# Issue 11: elastic inference of AdaTape-S/16 at random init, and of the
# default parity model trained there (53 s on the H200).
step elastic_s16 150 python3 -m experiments.elastic_inference \
  --config="$S16" --dtype=bfloat16 --examples=$EXAMPLES --batch=$BATCH \
  --chunk=$CHUNK --buckets=tuned --repeats=$REPEATS \
  --out="$OUT/elastic_inference_s16_${KIND}.txt"
step parity_train 120 python3 -m adatape.main --config=$PARITY \
  --workdir=/tmp/gpu_checks_parity ${TRAIN[@]+"${TRAIN[@]}"}
cp /tmp/gpu_checks_parity/results.json "$OUT/parity_results_${KIND}.json" \
  2>/dev/null
# The default buckets (T/4, T/2, 3T/4, T), then those timed there.
for buckets in default tuned; do
  flag=--buckets=$buckets
  [ "$buckets" = default ] && flag=--buckets=
  step "elastic_parity_$buckets" 80 python3 -m experiments.elastic_inference \
    --workdir=/tmp/gpu_checks_parity "$flag" --repeats=31 \
    --out="$OUT/elastic_inference_parity_${KIND}_$buckets.txt"
done
fi
if [ "$PART" = ablate ] || [ "$PART" = all ]; then
# What the speed part's figures owe to each change, on the same device:
# the S/16 pair in float32 (the mixed-precision share; the float32 figures
# in ../shared/docs/gpu.md predate the lean step), then in bfloat16 with
# XLA's attention (the cuDNN kernel's share; skipped when the speed part
# fell back to it in this call).
step ablate_float32 200 python3 -m experiments.throughput --dtype=float32 \
  --attention=xla --batch=$BATCH --repeats=10 ${SPECS[@]+"${SPECS[@]}"} \
  --out="$OUT/throughput_${KIND}_float32.txt"
if [ "${ATTENTION:-auto}" != xla ]; then
  step ablate_xla 200 python3 -m experiments.throughput --dtype=bfloat16 \
    --attention=xla --batch=$BATCH --repeats=10 ${SPECS[@]+"${SPECS[@]}"} \
    --out="$OUT/throughput_${KIND}_xla.txt"
fi
fi
if [ "$PART" = flags ]; then
# Issue 14, not in `all`: ViT-S/16 under XLA flags that change how it
# runs the weight gradients' GEMMs, its LayerNorms and its launches. On
# the H200, ViT-S/16's LayerNorm backward wrote the normalized
# activations transposed ([D, B, L]) for split-K GEMMs to read, 5.7 ms
# of the 35.2 ms step in transposing fusions, and the GPU sat idle 5.4
# ms between kernels (experiments/results/
# throughput_nvidia_h200_sources.txt); the defaults first, for a
# baseline from the same machine. Flags from jaxlib 0.11.2's own table
# (its split-K flags are gone: "Unknown flag in XLA_FLAGS", a fatal
# error): cuBLASLt for the GEMMs; no packing of dot operands along K;
# cuBLAS for every GEMM (no Triton GEMMs, so no split-K rewrites);
# cuDNN's LayerNorm kernels; Hopper's programmatic dependent launch.
SAVED_XLA_FLAGS=${XLA_FLAGS:-}
for flags in "" --xla_gpu_enable_cublaslt=true \
    --xla_gpu_experimental_pack_dot_operands_along_k_dimension=false \
    --xla_gpu_enable_triton_gemm=false \
    --xla_gpu_enable_cudnn_layer_norm=true --xla_gpu_enable_pdl=true; do
  name=${flags#--xla_gpu_}
  name=${name%=*}
  # XLA reads a value that does not start with "--" (a blank) as a file
  # name: no flags at all is no XLA_FLAGS.
  combined=$(echo "${SAVED_XLA_FLAGS:-} $flags" | xargs)
  if [ -n "$combined" ]; then export XLA_FLAGS=$combined; else
    unset XLA_FLAGS; fi
  step "flags_${name:-default}" 80 \
    python3 -m experiments.throughput --dtype=bfloat16 --attention=auto \
    --batch=$BATCH --repeats=10 --spec="$VIT" \
    --out="$OUT/throughput_${KIND}_flags_${name:-default}.txt"
done
if [ -n "$SAVED_XLA_FLAGS" ]; then export XLA_FLAGS=$SAVED_XLA_FLAGS; else
  unset XLA_FLAGS; fi
# optim.global_norm as it now is (leaves of one shape stacked, 11
# reductions) against optax's per-leaf norm, on ViT-S/16; the H200 timed
# only its first form, every leaf in one vector
# (global_norm_ab_nvidia_h200.txt).
step global_norm_ab 120 python3 -m experiments.global_norm_ab \
  --dtype=bfloat16 --batch=$BATCH --repeats=15 --spec="$VIT" \
  --out="$OUT/global_norm_ab_${KIND}_grouped.txt"
fi
if [ "$PART" = ab ]; then
# Issue 14, not in `all`: A/Bs timed in the same interleaved rounds of one
# process each (`throughput.py --vary`), since the same code read 3.8-5.5%
# apart between processes on the H200 (throughput_nvidia_h200_flags.txt).
# First AdaTape-S/16 with its 10-step reading scan as a loop
# (tape.scan_unroll=1, the default) and written out (10), beside
# ViT-S/16: on the H200 its step ran 877 kernels under 5 us against
# ViT-S/16's 555 and idled 6.3 ms against 5.4
# (throughput_nvidia_h200_sources.txt); on the 2-core CPU the unrolled
# scan was level (experiments/results/scan_unroll_cpu.txt).
step ab_unroll 180 python3 -m experiments.throughput --dtype=bfloat16 \
  --attention=auto --batch=$BATCH --repeats=10 ${SPECS[@]+"${SPECS[@]}"} \
  --vary=tape.scan_unroll=1,10 --out="$OUT/throughput_${KIND}_ab_unroll.txt"
# Then ViT-S/16 under the XLA options that read above the defaults in
# processes of their own (cuBLASLt 7279, PDL 7274 train img/s against
# 6898-7163) or moved inference (no Triton GEMMs: 28853 against
# 25266-26864), each against its default, set per program.
for option in xla_gpu_enable_cublaslt=false,true \
    xla_gpu_enable_pdl=false,true xla_gpu_enable_triton_gemm=true,false; do
  name=${option#xla_gpu_}
  name=${name%%=*}
  step "ab_$name" 110 python3 -m experiments.throughput --dtype=bfloat16 \
    --attention=auto --batch=$BATCH --repeats=10 --spec="$VIT" \
    --vary="$option" --out="$OUT/throughput_${KIND}_ab_$name.txt"
done
fi
echo "== steps: ${timings[*]+${timings[*]/%/;}} ${SECONDS} s in all"
exit $failed
