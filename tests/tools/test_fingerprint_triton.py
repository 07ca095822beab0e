"""The Triton kernel of the fingerprint gives the CPU reference's bits: checked here on the CPU
under Triton's interpreter (a subprocess, since the switch is read when Triton loads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from e2e.cluster.harness import ROOT

CHECK = r"""
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from tests.unit.test_fingerprint import build, VECTORS
from trainguard.integrity.fingerprint import FingerprintKey
from trainguard.gpu.kernel import fingerprint_tensors
from trainguard.gpu.tensors import cpu_fingerprint
cpu = torch.device("cpu")
results = []
for case in json.loads(VECTORS.read_text())["cases"]:
    key = FingerprintKey.from_secret(bytes.fromhex(case["key"]))
    tensors = [torch.from_numpy(np.ascontiguousarray(build(s))) for s in case["tensors"]]
    results.append([case["name"], case["fingerprint"], fingerprint_tensors(key, tensors, cpu)])
key = FingerprintKey.from_secret(bytes(range(32)))
torch.manual_seed(0)
weights = [torch.randn(130, 70, dtype=torch.bfloat16), torch.randn(64, 64).t()[::2]]
weights.append(torch.arange(7, dtype=torch.int8))
name = "bf16, a strided view, int8"
results.append([name, cpu_fingerprint(key, weights), fingerprint_tensors(key, weights, cpu)])
from trainguard.integrity import fingerprint as reference
from trainguard.gpu import kernel
buffer = np.random.default_rng(1).integers(0, 256, size=5 * 16384 + 100, dtype=np.uint8)
digest, terms = reference.fingerprint_with_chunks(key, buffer)
gpu_digest, gpu_terms = kernel.fingerprint_with_chunks(key, torch.from_numpy(buffer), cpu)
same = gpu_digest == digest and gpu_terms.tolist() == terms.view(np.int64).tolist()
results.append(["per-chunk terms", "same", "same" if same else "differ"])
view = torch.from_numpy(buffer)[4:]  # whole chunks that do not start on a 64-bit pair: copied once
name = "a view off the pair boundary"
results.append([name, cpu_fingerprint(key, [view]), fingerprint_tensors(key, [view], cpu)])
print(json.dumps(results))
"""


def test_the_triton_kernel_matches_the_reference_bit_for_bit() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 8
    for name, expected, triton in results:
        assert triton == expected, name
