"""The operator's entry point: `trainguard run`."""

from __future__ import annotations

import argparse
import asyncio
import sys

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
    args = parser.parse_args(argv)

    import trainguard.handlers  # noqa: F401 - registers the kopf handlers

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
