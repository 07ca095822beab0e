"""On a CUDA GPU: the compiled kernel gives the CPU reference's fingerprint. Skips without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainguard.gpu.tensors import cpu_fingerprint
from trainguard.integrity import fingerprint as reference
from trainguard.integrity.fingerprint import CHUNK_BYTES, FingerprintKey

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
KEY = FingerprintKey.from_secret(bytes(range(32)))
CUDA = torch.device("cuda")


def test_cuda_fingerprint_equals_the_cpu_reference() -> None:
    from trainguard.gpu.kernel import fingerprint_tensors

    torch.manual_seed(0)
    weights = [torch.randn(4096, 4096, dtype=torch.bfloat16), torch.randn(1000), torch.randn(64, 64).t()]
    on_gpu = [w.cuda() for w in weights]
    assert fingerprint_tensors(KEY, on_gpu, CUDA) == cpu_fingerprint(KEY, weights)
    on_gpu[0][17, 3] += 1
    assert fingerprint_tensors(KEY, on_gpu, CUDA) != cpu_fingerprint(KEY, weights)


def test_cuda_fingerprint_of_empty_partial_and_whole_chunks() -> None:
    from trainguard.gpu.kernel import fingerprint_tensors

    torch.manual_seed(1)
    for sizes in (
        [],
        [0],
        [1],
        [3, 5],
        [CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1],
        [7 * CHUNK_BYTES + 4],
    ):
        tensors = [torch.randint(0, 256, (n,), dtype=torch.uint8) for n in sizes]
        on_gpu = [t.to(CUDA) for t in tensors]
        assert fingerprint_tensors(KEY, on_gpu, CUDA) == cpu_fingerprint(KEY, tensors), sizes


def test_cuda_views_off_the_pair_boundary_and_chunk_terms() -> None:
    from trainguard.gpu import kernel

    raw = torch.randint(0, 256, (5 * CHUNK_BYTES + 100,), dtype=torch.uint8)
    on_gpu = raw.to(CUDA)
    for offset in (1, 4, 8, 12):  # views that do not start on 8 bytes are copied once
        expected = cpu_fingerprint(KEY, [raw[offset:]])
        assert kernel.fingerprint_tensors(KEY, [on_gpu[offset:]], CUDA) == expected, offset
    digest, terms = reference.fingerprint_with_chunks(KEY, raw.numpy())
    gpu_digest, gpu_terms = kernel.fingerprint_with_chunks(KEY, raw.to(CUDA), CUDA)
    assert gpu_digest == digest
    assert gpu_terms.cpu().numpy().tolist() == terms.view(np.int64).tolist()
