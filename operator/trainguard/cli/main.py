"""The operator's entry point: `trainguard run`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import kopf
from prometheus_client import start_http_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainguard", description="trainguard operator")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    run.add_argument(
        "--namespace", action="append", default=[], help="watch only these namespaces (globs allowed)"
    )
    run.add_argument("--metrics-address", default="127.0.0.1", help="where /metrics listens")
    run.add_argument("--metrics-port", type=int, default=8080, help="0 disables /metrics")
    run.add_argument(
        "--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    run.add_argument("--webhook-port", type=int, default=9443, help="admission webhook port; 0 serves none")
    run.add_argument("--webhook-listen", default="127.0.0.1", help="address the webhook server binds")
    run.add_argument(
        "--webhook-host", default="127.0.0.1", help="address the API server calls the webhooks at"
    )
    run.add_argument(
        "--webhook-service",
        default="",
        help="namespace/name of the webhooks' Service (in a cluster; else the host)",
    )
    run.add_argument("--webhook-cert-dir", type=Path, default=None, help="TLS files (made there when absent)")
    run.add_argument("--webhook-config-name", default="trainguard", help="name of the webhook configurations")
    run.add_argument(
        "--plain-http-registry",
        action="append",
        default=[],
        help="host:port of a registry spoken to over plain HTTP (a loopback test registry only)",
    )
    run.add_argument(
        "--operator-user",
        action="append",
        default=[],
        help="this operator's identity in admission requests (e.g. system:serviceaccount:ns:name)",
    )
    run.add_argument(
        "--verify-cache-seconds",
        type=float,
        default=300.0,
        help="reuse a verified (digest, signers) verdict this long",
    )
    run.add_argument(
        "--integrity-port", type=int, default=8082, help="port of the integrity report endpoint; 0: none"
    )
    run.add_argument("--integrity-listen", default="127.0.0.1", help="address the integrity endpoint binds")
    args = parser.parse_args(argv)

    import trainguard.handlers
    from trainguard.handlers import verification
    from trainguard.kube import client as kube

    kube.configure()
    verification.configure(
        verification.AdmissionConfig(
            port=args.webhook_port,
            listen=args.webhook_listen,
            host=args.webhook_host,
            service=args.webhook_service,
            cert_dir=args.webhook_cert_dir,
            config_name=args.webhook_config_name,
            plain_http_registries=frozenset(args.plain_http_registry),
            operator_users=frozenset(args.operator_user),
            cache_seconds=args.verify_cache_seconds,
        )
    )

    from trainguard.handlers import integrity

    integrity.configure(integrity.IntegrityConfig(port=args.integrity_port, listen=args.integrity_listen))
    if args.webhook_port:
        import trainguard.handlers.admission  # noqa: F401 - registers the admission webhooks

    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
