#!/bin/sh
# Check and time qcompiler's GPU artifacts on a GPU machine, through the C runtime alone (no
# Python, TVM or network; the NVIDIA driver is all it needs). Prepare the folder on a CPU
# machine with benchmarks/prepare_gpu_check.py, copy it over, then:
#
#   gpu_check/gpu_check.sh [FOLDER]          # FOLDER defaults to the script's own folder
#
# For each model of checks.txt (fp32, int8, fp16) it runs every input of inputs/ and compares the
# outputs with the CPU build's (expected/KIND/), then times the first input (REPEAT runs after
# WARMUP, medians). Prints a table; exits 1 if an output differs, 2 if a model cannot run.
set -u

dir=$(cd "${1:-$(dirname "$0")}" && pwd) || exit 2
cd "$dir" || exit 2
repeat=${REPEAT:-200}
warmup=${WARMUP:-20}
if [ ! -x ./qc_run ] || [ ! -f checks.txt ]; then
  echo "gpu_check: $dir has no qc_run or checks.txt: prepare it with benchmarks/prepare_gpu_check.py" >&2
  exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
fi
echo "folder: $dir"

differ=0
broken=0
table=""
first_input=$(ls inputs/*.npy | head -n 1)
while read -r kind model input output tolerance; do
  [ -n "$kind" ] || continue
  passed=0
  total=0
  worst=0
  for x in inputs/*.npy; do
    total=$((total + 1))
    log=$(./qc_run "$model" --input "$input=$x" --expect "$output=expected/$kind/$(basename "$x")" \
          --tolerance "$tolerance" 2>&1)
    rc=$?
    check=$(printf '%s\n' "$log" | grep '^check ' | head -n 1)
    if [ "$rc" -eq 0 ]; then
      passed=$((passed + 1))
    elif [ -n "$check" ]; then
      differ=1
      echo "FAIL $kind $(basename "$x"): $check"
    else
      broken=1
      echo "ERROR $kind $(basename "$x"): $(printf '%s\n' "$log" | tail -n 1)"
    fi
    diff=$(printf '%s\n' "$check" | sed -n 's/.*max_abs_diff=\([^ ]*\).*/\1/p')
    worst=$(awk -v a="$worst" -v b="${diff:-0}" 'BEGIN { print (b + 0 > a + 0) ? b : a }')
  done
  timing=$(./qc_run "$model" --input "$input=$first_input" --repeat "$repeat" --warmup "$warmup" 2>&1 >/dev/null)
  median=$(printf '%s\n' "$timing" | sed -n 's/^latency_ms median=\([0-9.]*\).*/\1/p')
  if [ -z "$median" ]; then
    broken=1
    echo "ERROR $kind timing: $(printf '%s\n' "$timing" | tail -n 1)"
    median=nan
  fi
  table="$table$(printf '%-6s %-18s %8s %14s %10s %12s' "$kind" "$model" "$passed/$total" "$worst" "$tolerance" "$median")
"
  eval "ms_$kind=$median"
done < checks.txt

echo
printf '%-6s %-18s %8s %14s %10s %12s\n' kind artifact "outputs" "max |diff|" tolerance "median ms"
printf '%s' "$table"
if [ -n "${ms_fp32:-}" ] && [ -n "${ms_int8:-}" ]; then
  awk -v f="$ms_fp32" -v i="$ms_int8" 'BEGIN { if (i + 0 > 0) printf "int8 speed-up over fp32: %.2fx (%d runs each)\n", f / i, '"$repeat"' }'
fi
if [ "$broken" -ne 0 ]; then
  echo "some models could not run here (see the ERROR lines)"
  exit 2
elif [ "$differ" -ne 0 ]; then
  echo "some outputs differ from the CPU build (see the FAIL lines)"
  exit 1
fi
echo "all outputs match the CPU build"
