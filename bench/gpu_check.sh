#!/usr/bin/env bash
# The GPU checks of the weight-integrity work, as one script for a machine with a CUDA GPU and
# PyTorch + Triton already installed (no cluster, no network):
#   1. tests/gpu: the compiled Triton kernel against the CPU reference, and the CUDA IPC path
#      (trainer and sidecar as separate processes, a third process tampering between steps);
#   2. bench/gpu_fingerprint.py: keyed fingerprint vs a plain read-only kernel vs torch.sum,
#      GB/s, fraction of the read limit, cost per step for an 8B-parameter bf16 model;
#   3. bench/guard_bench.py --cuda: the whole step boundary (trainer guard, socket, sidecar process, CUDA
#      IPC, both fingerprints) on an 8 GiB bf16 model, against one in-process fingerprint.
# Results (logs and JSON) go to $OUT when set, else bench/results/.
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
export PYTHONPATH="operator:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu_info.txt"
# --noconftest: the root conftest wires the local cluster, which a GPU machine does not run.
"$python" -m pytest --noconftest -p no:cacheprovider -q -rs tests/gpu 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
"$python" -m bench.gpu_fingerprint 2>&1 | tee "$out/gpu_bench.log"
bench=${PIPESTATUS[0]}
"$python" -m bench.guard_bench --cuda 2>&1 | tee "$out/gpu_guard.log"
guard=${PIPESTATUS[0]}
echo "gpu tests exit $tests, gpu bench exit $bench, guard bench exit $guard"
exit $(( tests != 0 || bench != 0 || guard != 0 ))
