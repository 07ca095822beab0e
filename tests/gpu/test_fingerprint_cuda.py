"""On a CUDA GPU: the compiled kernel gives the CPU reference's fingerprint. Skips without CUDA."""

from __future__ import annotations

import pytest
import torch

from trainguard.gpu.tensors import cpu_fingerprint
from trainguard.integrity.fingerprint import FingerprintKey

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_fingerprint_equals_the_cpu_reference() -> None:
    from trainguard.gpu.kernel import fingerprint_tensors

    key = FingerprintKey.from_secret(bytes(range(32)))
    torch.manual_seed(0)
    weights = [torch.randn(4096, 4096, dtype=torch.bfloat16), torch.randn(1000), torch.randn(64, 64).t()]
    on_gpu = [w.cuda() for w in weights]
    assert fingerprint_tensors(key, on_gpu, torch.device("cuda")) == cpu_fingerprint(key, weights)
    on_gpu[0][17, 3] += 1
    assert fingerprint_tensors(key, on_gpu, torch.device("cuda")) != cpu_fingerprint(key, weights)
