#!/usr/bin/env bash
# The GPU checks of the weight-integrity work, as one script for a machine with a CUDA GPU and
# PyTorch + Triton already installed (no cluster, no network):
#   1. tests/gpu: the compiled Triton kernel against the CPU reference, and the CUDA IPC path
#      (trainer and sidecar as separate processes, a third process tampering between steps);
#   2. bench/gpu_fingerprint.py: keyed fingerprint vs a read-only kernel on the same grid that loads
#      the same bytes the same way (and the plain read-only kernel of earlier runs) vs torch.sum,
#      GB/s, the keyed/read-only fraction (target 0.98), cost per step for an 8B-parameter bf16
#      model; a num_warps sweep of the keyed and read-only kernels alike (each configuration's
#      fraction, and best against best); it exits 1 if the timed kernel's output differs from the
#      CPU reference;
#   3. bench/guard_bench.py --cuda: the whole step boundary (trainer guard, socket, sidecar process, CUDA
#      IPC, both fingerprints) on an 8 GiB bf16 model, against one in-process fingerprint;
#   4. bench/step_bench.py: real-shaped training steps (decoder-only transformer, bf16, AdamW,
#      batch 8 x 1,024 tokens) alone and guarded (begin/end around optimizer.step, a sidecar
#      process in Enforce mode): "403m" (about 405M parameters) and "fill" (the largest of the
#      family that fits this GPU with headroom); the guard's added time per step against two reads
#      of the guarded state at the read-only kernel's speed (target 1.5x: reported, not a failure).
#      A false alarm (a violation on clean steps) is a failure.
# Results (logs and JSON) go to $OUT when set, else bench/results/.
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
export PYTHONPATH="operator:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
# A GPU machine without network access and without trainguard's pure-Python dependencies: wheels
# put in .whl/ beforehand (`pip download` of pydantic, cryptography and their own dependencies)
# are unpacked onto the path.
if ! "$python" -c "import pydantic, cryptography" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  for wheel in .whl/*.whl; do "$python" -m zipfile -e "$wheel" "$site"; done
  export PYTHONPATH="$PYTHONPATH:$site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu_info.txt"
# --noconftest: the root conftest wires the local cluster, which a GPU machine does not run.
"$python" -m pytest --noconftest -p no:cacheprovider -q -rs tests/gpu 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
rm -f "$out/fingerprint_gpu.json"  # the summary below must never show an earlier run's figures
"$python" -m bench.gpu_fingerprint 2>&1 | tee "$out/gpu_bench.log"
bench=${PIPESTATUS[0]}
"$python" -m bench.guard_bench --cuda 2>&1 | tee "$out/gpu_guard.log"
guard=${PIPESTATUS[0]}
rm -f "$out"/step_403m.json "$out"/step_fill.json
steps=0
for shape in 403m fill; do
  "$python" -m bench.step_bench --shape "$shape" 2>&1 | tee "$out/gpu_step_$shape.log"
  status=${PIPESTATUS[0]}
  (( status == 0 )) || steps=$status
done
# The headline figures, from the JSON the fingerprint bench wrote in this run.
"$python" - "$out/fingerprint_gpu.json" <<'PY' || bench=1
import json, sys
r = json.load(open(sys.argv[1]))
g = r["gb_per_second"]
print(f"fingerprint on {r['device']}: keyed {g['trainguard_keyed_nh']:.0f} GB/s, read-only (same loads, same grid) "
      f"{g['read_only_triton']:.0f} GB/s, fraction {r['fraction_of_read_limit']:.3f} "
      f"(median {r['fraction_of_read_limit_median']:.3f}; target {r['target_fraction']}: "
      f"{'met' if r['meets_target'] else 'NOT met'}); plain read-only {g['read_only_triton_plain']:.0f} GB/s "
      f"(fraction {r['fraction_of_plain_read_only']:.3f}); bit-identical to the CPU reference: "
      f"{'yes' if r['bit_identical_to_cpu_reference'] else 'NO: ' + '; '.join(r['differences'])}")
s = r.get("launch_sweep")
if s:
    configs = ", ".join(f"{name} {c['keyed_gb_per_second']:.0f}/{c['read_only_gb_per_second']:.0f} GB/s "
                        f"({c['fraction']:.3f})" for name, c in s["configs"].items())
    print(f"launch sweep, keyed/read-only alike: {configs}; best vs best {s['fraction_best_vs_best']:.3f} "
          f"(keyed {s['best_keyed']}, read-only {s['best_read_only']}; the kernel uses {s['current']})")
PY
# The step bench's headline per shape, again from this run's JSON (a missing file is a failure).
"$python" - "$out/step_403m.json" "$out/step_fill.json" <<'PY' || steps=1
import json, sys
from bench.step_bench import summary
for path in sys.argv[1:]:
    print(summary(json.load(open(path))))
PY
echo "gpu tests exit $tests, gpu bench exit $bench, guard bench exit $guard, step bench exit $steps"
exit $(( tests != 0 || bench != 0 || guard != 0 || steps != 0 ))
