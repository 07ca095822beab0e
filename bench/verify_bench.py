"""Benchmark of image verification (the heart of admission) under 100 concurrent requests.

Measured against a real registry on loopback with a real cosign signature:
  baseline  one plain manifest GET (the floor any verification pays)
  warm      verify by tag with a warm (digest, signers) cache: one tag resolution
  cold      verify with an empty cache: tag resolution, signature manifest, payload blob, ECDSA
Writes bench/results/verify.json; figures are reported as ratios to the baseline of the same run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.load import latency_report, measure, write_report
from e2e.cluster.registry import CosignKey, Registry
from e2e.cluster.waiting import free_port
from trainguard.signing.cosign import Signer
from trainguard.signing.registry import RegistryClient
from trainguard.signing.verifier import ResultCache, Verifier

CONCURRENCY = 100
REQUESTS = 1000


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(free_port(), Path(tmp)).start()
        try:
            digest = registry.push("bench/trainer", "v1", "benchmark image")
            key = CosignKey.generate(Path(tmp) / "keys", "release")
            key.sign_classic(f"{registry.host}/bench/trainer@{digest}")
            signers = [Signer.from_pem("release", key.public.read_text())]
            client = RegistryClient(plain_http=frozenset({registry.host}))
            image = f"{registry.host}/bench/trainer:v1"
            warm = Verifier(client)
            warm.verify(image, signers)

            def cold_verify(_: int) -> object:
                return Verifier(client, ResultCache(ttl_seconds=0)).verify(image, signers)

            results = {
                "baseline_manifest_get": measure(
                    lambda _: client.manifest(registry.host, "bench/trainer", "v1"), CONCURRENCY, REQUESTS
                ),
                "warm_cache": measure(lambda _: warm.verify(image, signers), CONCURRENCY, REQUESTS),
                "cold_cache": measure(cold_verify, CONCURRENCY, REQUESTS),
            }
        finally:
            registry.stop()
    write_report("verify.json", latency_report(CONCURRENCY, REQUESTS, results, "baseline_manifest_get"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
