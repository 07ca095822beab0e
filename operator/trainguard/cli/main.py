"""The operator's entry point: `trainguard run`; and `trainguard inputs` (signed shared folders)."""

from __future__ import annotations

import argparse
import gc
import logging
import socket
import sys
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import kopf
import uvloop
from prometheus_client import start_http_server
from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    given_argv = sys.argv[1:] if argv is None else argv
    if given_argv[:1] == ["inputs"]:
        # Signed manifests of shared folders (docs/researchers.md); no operator code involved.
        from trainguard.inputs.__main__ import main as inputs_main

        return inputs_main(given_argv[1:])
    parser = argparse.ArgumentParser(
        prog="trainguard",
        description="trainguard operator. Every flag can also be set as a TRAINGUARD_* environment variable "
        "(e.g. --webhook-port as TRAINGUARD_WEBHOOK_PORT); a flag wins over the environment.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("inputs", help="make or verify signed manifests of shared folders (see `inputs --help`)")
    run = sub.add_parser("run", help="run the operator")
    run.add_argument(
        "--namespace", action="append", default=[], help="watch only these namespaces (globs allowed)"
    )
    run.add_argument("--metrics-address", default="127.0.0.1", help="where /metrics listens")
    run.add_argument("--metrics-port", type=int, default=8080, help="0 disables /metrics")
    run.add_argument(
        "--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    run.add_argument("--verbose", action="store_true", help="log at DEBUG level (default INFO)")
    run.add_argument(
        "--log-format", choices=["plain", "full", "json"], default="full", help="log line format"
    )
    # Each flag below sets the Settings field of the same name; unset flags leave the field to
    # the environment or its default.
    run.add_argument("--webhook-port", type=int, help="admission webhook port; 0 serves none (default 9443)")
    run.add_argument("--webhook-listen", help="address the webhook server binds")
    run.add_argument("--webhook-host", help="address the API server calls the webhooks at")
    run.add_argument("--webhook-service", help="namespace/name of the webhooks' Service (in a cluster)")
    run.add_argument("--webhook-cert-dir", type=Path, help="TLS files (made there when absent)")
    run.add_argument("--webhook-config-name", help="name of the webhook configurations")
    run.add_argument(
        "--webhooks",
        choices=["self", "chart"],
        help="who writes the webhook configurations: self (at start, with a CA made here; default) or "
        "chart (the Helm chart does; only serve, with tls.crt/tls.key from --webhook-cert-dir)",
    )
    run.add_argument(
        "--role",
        choices=["all", "admission"],
        help="all: reconcile and serve admission (default); admission: serve the webhooks only "
        "(stateless, every replica), never reconcile",
    )
    run.add_argument(
        "--leader-elect",
        dest="leader_election",
        action="store_const",
        const=True,
        help="reconcile only while holding the Lease --lease-name in the operator's namespace; "
        "wait as a standby until then (several reconciler replicas)",
    )
    run.add_argument("--lease-name", help="name of the reconciler's Lease (default trainguard-reconciler)")
    run.add_argument("--lease-duration", dest="lease_duration_seconds", type=float,
                     help="seconds a silent leader's Lease stays its own (default 15)")  # fmt: skip
    run.add_argument("--lease-renew-deadline", dest="lease_renew_deadline_seconds", type=float,
                     help="a leader that could not renew for this long stops (default 10)")  # fmt: skip
    run.add_argument("--lease-retry", dest="lease_retry_seconds", type=float,
                     help="seconds between renewals and standby tries (default 2)")  # fmt: skip
    run.add_argument(
        "--plain-http-registry",
        dest="plain_http_registries",
        action="append",
        help="host:port of a registry spoken to over plain HTTP (a loopback test registry only)",
    )
    run.add_argument(
        "--operator-user",
        dest="operator_users",
        action="append",
        help="this operator's identity in admission requests (e.g. system:serviceaccount:ns:name)",
    )
    run.add_argument("--verify-cache-seconds", type=float, help="reuse a verified verdict this long")
    run.add_argument(
        "--registry-auth-file",
        type=Path,
        help="docker config JSON: registry credentials for registries no tenant pull Secret covers",
    )
    run.add_argument("--integrity-port", type=int, help="port of the integrity report endpoint; 0: none")
    run.add_argument("--integrity-listen", help="address the integrity endpoint binds")
    args = parser.parse_args(argv)

    from trainguard import metrics
    from trainguard.cli.leader import Elector, lead_while
    from trainguard.settings import Role, Settings

    given = {k: v for k, v in vars(args).items() if v is not None and k in Settings.model_fields}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        parser.error(str(exc))

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    # aiohttp's access log would add a line per webhook call beside trainguard's own line per
    # admission decision (who, what, tenant, why): keep it for --verbose.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # kopf logs each handler's and indexer's success on every event at INFO: thousands of lines per
    # hundred jobs, and a twentieth of the reconciler's CPU under a burst. trainguard logs its own
    # decisions, verdicts and failures; kopf's warnings and errors stay.
    logging.getLogger("kopf.objects").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    import trainguard.handlers  # registers the reconcilers and the integrity endpoint
    from trainguard.kube import client as kube

    kube.configure()
    if settings.role is Role.ADMISSION:
        trainguard.handlers.serve_admission_only(kopf.get_default_registry())
    if settings.webhook_port:
        import trainguard.handlers.admission  # registers the admission webhooks

    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    operator = kopf.operator(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(settings=settings),
    )
    if not settings.leader_election:
        metrics.LEADER.set(1 if settings.role is Role.ALL else 0)
        _run(operator)
        return 0
    # A Pod's name is its hostname: the Lease names the replica that leads.
    elector = Elector(
        settings.operator_namespace,
        settings.lease_name,
        f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
        settings.lease_timing(),
        settings.pod_name,
    )
    _run(lead_while(elector, operator, args.liveness))
    return 0


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run the operator on uvloop: its event loop and TLS transport are libuv's, in C, and the
    admission webhooks every `kubectl apply` waits on spend most of their time there."""
    freeze_loaded_objects()
    uvloop.run(main)


def freeze_loaded_objects() -> None:
    """Move everything loaded so far (kopf, the Kubernetes client's models, pydantic's schemas:
    about 100,000 objects, kept for the life of the process) out of the garbage collector's sight.
    Its full passes walked them all: 45-70 ms each under a burst of admissions, with every review
    in flight waiting; about 2 ms frozen."""
    gc.collect()
    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
