"""Benchmark of TrainingJob admission through the real API server, 100 concurrent requests.

Each request is a server-side dry-run create (webhooks run, nothing is stored):
  baseline  a ConfigMap in the same namespace (API server cost, no trainguard webhook)
  warm      a TrainingJob by tag: mutating + validating webhook, verdict cache warm
  cold      the same with the operator's verdict cache off (every request reads the registry)
Writes bench/results/admission.json; figures are also reported as ratios to the baseline.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

from kubernetes import client, config

from bench.load import latency_report, measure, write_report
from e2e.cluster.harness import (
    RELEASE_NAMESPACE,
    OperatorProcess,
    install_chart,
    make_tenant,
    service_account_kubeconfig,
    signed_image,
)
from e2e.cluster.localcluster import ROOT_CRDS, LocalCluster

CONCURRENCY = 100
REQUESTS = 500


def main() -> int:
    cluster = LocalCluster().up()
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT_CRDS))
    install_chart(cluster)
    tmp = Path(tempfile.mkdtemp(prefix="trainguard-bench-"))
    signed = signed_image(cluster, tmp, repository="bench/trainer")
    space = make_tenant(cluster, prefix="tj-bench", signed=signed, nominal=1000)
    kubeconfig = service_account_kubeconfig(cluster, tmp, RELEASE_NAMESPACE, "trainguard")

    config.load_kube_config(config_file=str(cluster.kubeconfig))
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONCURRENCY
    api = client.ApiClient(configuration)
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)

    def admit(i: int) -> None:
        custom.create_namespaced_custom_object(
            "trainguard.dev",
            "v1alpha1",
            space.namespace,
            "trainingjobs",
            space.job(f"bench-{i}"),
            dry_run="All",
        )

    def baseline(i: int) -> None:
        body = {"metadata": {"name": f"bench-{i}"}, "data": {"k": "v"}}
        core.create_namespaced_config_map(space.namespace, body, dry_run="All")

    results: dict[str, dict[str, float]] = {}
    for name, cache in (("warm_cache", "300"), ("cold_cache", "0")):
        operator = OperatorProcess(
            tmp / f"operator-{name}.log",
            [space.namespace],
            kubeconfig,
            registry=cluster.registry,
            extra_args=("--verify-cache-seconds", cache),
        )
        operator.start()
        try:
            results["baseline_configmap"] = measure(baseline, CONCURRENCY, REQUESTS)
            results[name] = measure(admit, CONCURRENCY, REQUESTS)
        finally:
            operator.stop()
    cluster.kubectl("delete", "namespace", space.namespace, "--wait=false")
    cluster.kubectl("delete", "tenant", space.tenant, "--wait=false")

    report = latency_report(CONCURRENCY, REQUESTS, results, "baseline_configmap", run=uuid.uuid4().hex[:8])
    write_report("admission.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
