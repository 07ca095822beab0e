"""`kubectl trainguard`: the researchers' view of their jobs, queues, quotas, images and events.

Installed as `kubectl-trainguard`, so kubectl finds it on the PATH. It reads with the caller's
kubeconfig, context and identity (`--as`/`--as-group` as kubectl), never more. This module only
parses arguments, reads (`kube.caller`) and prints; what is shown is decided in `cli.views`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from trainguard.api.constants import LOCAL_QUEUE
from trainguard.api.models import TrainingJob
from trainguard.cli import views
from trainguard.cli.views import Exit
from trainguard.kube.caller import Caller, CallerError, Forbidden, Refused, Target, Unreachable

POLL_SECONDS = 2.0
_ANSI = {"green": "32", "red": "31", "yellow": "33"}


class Output:
    """Where and how to print: colour only on a terminal and without NO_COLOR; the progress line
    of --wait is rewritten in place on a terminal, one plain line per change otherwise."""

    def __init__(self, stream: TextIO, fmt: str) -> None:
        self.stream, self.fmt = stream, fmt
        self.tty = stream.isatty()
        self.colour = self.tty and not os.environ.get("NO_COLOR")
        self._last_progress = ""
        words = "|".join(re.escape(w) for w in sorted(views.COLOURS, key=len, reverse=True))
        self._words = re.compile(rf"(?<![\w/-])({words})(?![\w/-])")

    def lines(self, lines: Sequence[str]) -> None:
        self.end_progress()
        for line in lines:
            if self.colour:
                line = self._words.sub(lambda m: self._paint(m.group(1)), line)
            print(line, file=self.stream)

    def _paint(self, word: str) -> str:
        return f"\033[{_ANSI[views.COLOURS[word]]}m{word}\033[0m"

    def data(self, value: Any) -> None:
        self.end_progress()
        if self.fmt == "yaml":
            print(yaml.safe_dump(value, sort_keys=False), end="", file=self.stream)
        else:
            print(json.dumps(value, indent=2), file=self.stream)

    def show(self, value: Any, human: Callable[[], Sequence[str]]) -> None:
        if self.fmt in ("json", "yaml"):
            self.data(value)
        else:
            self.lines(human())

    def progress(self, text: str) -> None:
        """On a terminal: one line rewritten in place (stderr, so -o json stays clean)."""
        if self.tty:
            print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
        elif text.split(",")[0] != self._last_progress.split(",")[0]:
            print(text, file=sys.stderr, flush=True)
        self._last_progress = text

    def end_progress(self) -> None:
        if self.tty and self._last_progress:
            print("", file=sys.stderr)
        self._last_progress = ""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    flags = common.add_argument_group("kubectl flags (as kubectl reads them)")
    flags.add_argument(
        "--kubeconfig", help="path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    flags.add_argument("--context", help="the kubeconfig context to use")
    flags.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    flags.add_argument("--as", dest="as_user", metavar="USER", help="act as this user (impersonation)")
    flags.add_argument(
        "--as-group", dest="as_groups", action="append", default=[], metavar="GROUP", help="act as this group"
    )
    flags.add_argument(
        "-o", "--output", choices=["table", "json", "yaml"], default="table", help="output format"
    )

    parser = argparse.ArgumentParser(
        prog="kubectl trainguard",
        description="trainguard for researchers: why a TrainingJob waits, failed or was refused, the queue "
        "and quotas, images checked before you apply, and a job's audit trail. Reads with your kubeconfig "
        "and identity only.",
        epilog=views.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=[common],
            help=text,
            description=text,
            epilog=views.EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    for name, text in (
        ("status", "a job's state, replicas, pinned image and signer, people, integrity and queue place"),
        ("why", "why a job waits, failed or was refused, in plain words with numbers, and what to do"),
    ):
        cmd = command(name, text)
        cmd.add_argument("job", help="the TrainingJob's name")
        cmd.add_argument("--wait", action="store_true", help="wait until the job runs, succeeds or fails")
        cmd.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)")
    queue = command("queue", "waiting TrainingJobs in their queue's order, with the reason and numbers")
    queue.add_argument("--tenant", help="only this tenant's jobs")
    queue.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace you may read")
    quota = command(
        "quota", "tenants' GPU quotas: nominal, borrowing limit, in use, borrowed, admitted, waiting"
    )
    quota.add_argument("--tenant", help="this tenant (default: the namespace's tenant)")
    quota.add_argument("-A", "--all-tenants", action="store_true", help="every tenant")
    verify = command(
        "verify-image",
        "check an image as admission will (a server-side dry run: the same webhooks, the same messages); "
        "nothing is created",
    )
    verify.add_argument("image", help="the image reference, as in spec.image")
    verify.add_argument("--tenant", help="the tenant (default: the namespace's tenant)")
    events = command("events", "a job's audit trail: who did what, when (oldest first)")
    events.add_argument("job", help="the TrainingJob's name")
    events.add_argument("--pods", action="store_true", help="include the events of the job's pods")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(sys.stdout, args.output)
    identity = args.as_user or "the kubeconfig's user"
    try:
        caller = Caller(
            Target(args.kubeconfig, args.context, args.namespace, args.as_user, tuple(args.as_groups))
        )
        return int(COMMANDS[args.command](caller, args, out))
    except Forbidden as exc:
        out.end_progress()
        print(views.forbidden_line(exc.server_message, identity, args.as_groups), file=sys.stderr)
        return Exit.FORBIDDEN
    except Unreachable as exc:
        out.end_progress()
        print(f"error: {exc}", file=sys.stderr)
        return Exit.UNREACHABLE
    except CallerError as exc:
        out.end_progress()
        print(f"error: the API server answered: {exc}", file=sys.stderr)
        return Exit.UNREACHABLE
    except ValidationError as exc:
        out.end_progress()
        print(
            f"error: this TrainingJob does not match the plugin's version of the API: {exc}", file=sys.stderr
        )
        return Exit.UNREACHABLE
    except KeyboardInterrupt:
        out.end_progress()
        return 130


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _job(caller: Caller, name: str) -> TrainingJob | None:
    raw = caller.get_job(caller.namespace, name)
    return TrainingJob.model_validate(raw) if raw is not None else None


def _wait(caller: Caller, args: argparse.Namespace, out: Output) -> tuple[TrainingJob | None, bool]:
    """Poll the job until it runs, succeeds or fails (or --timeout): (the job, whether it got there)."""
    start = time.monotonic()
    while True:
        job = _job(caller, args.job)
        if job is not None and views.finished_waiting(job):
            return job, True
        elapsed = time.monotonic() - start
        if elapsed >= args.timeout:
            return job, False
        out.progress(views.progress_line(job, args.job, elapsed))
        time.sleep(min(POLL_SECONDS, max(args.timeout - elapsed, 0.1)))


def cmd_status(caller: Caller, args: argparse.Namespace, out: Output) -> Exit:
    job, done = _wait(caller, args, out) if args.wait else (_job(caller, args.job), True)
    if job is None:
        return _missing(caller, args, out)
    view = views.job_status(job, _now())
    out.show(view, lambda: views.status_lines(view))
    return _timed_out(args, out) if not done else views.status_exit(job)


def cmd_why(caller: Caller, args: argparse.Namespace, out: Output) -> Exit:
    job, done = _wait(caller, args, out) if args.wait else (_job(caller, args.job), True)
    if job is None:
        return _missing(caller, args, out)
    answer = views.why(job)
    out.show(answer.to_data(), answer.lines)
    return _timed_out(args, out) if not done else answer.exit


def _timed_out(args: argparse.Namespace, out: Output) -> Exit:
    print(f"timed out: {args.job} did not run, succeed or fail within {args.timeout:.0f}s", file=sys.stderr)
    return Exit.TIMED_OUT


def _missing(caller: Caller, args: argparse.Namespace, out: Output) -> Exit:
    answer = views.why_missing(args.job, caller.namespace, caller.list_events(caller.namespace), _now())
    out.show(answer.to_data(), answer.lines)
    return answer.exit


def cmd_queue(caller: Caller, args: argparse.Namespace, out: Output) -> Exit:
    raw = caller.list_jobs(None if args.all_namespaces else caller.namespace)
    jobs = [TrainingJob.model_validate(j) for j in raw]
    if args.tenant:
        jobs = [j for j in jobs if j.spec.tenant == args.tenant]
    rows = views.queue_rows(jobs, _now())
    out.show({"items": rows}, lambda: views.queue_table(rows))
    return Exit.OK


def _namespace_tenant(caller: Caller) -> str | None:
    return views.tenant_of_local_queue(caller.get_local_queue(caller.namespace, LOCAL_QUEUE))


def cmd_quota(caller: Caller, args: argparse.Namespace, out: Output) -> Exit:
    tenant = None if args.all_tenants else args.tenant or _namespace_tenant(caller)
    rows = views.quota_rows(caller.list_cluster_queues(), tenant)
    out.show({"items": rows}, lambda: views.quota_table(rows))
    if tenant and not rows:
        print(f"tenant {tenant} has no ClusterQueue (no such tenant, or not rendered yet)", file=sys.stderr)
        return Exit.NOT_FOUND
    return Exit.OK


def cmd_verify_image(caller: Caller, args: argparse.Namespace, out: Output) -> Exit:
    own = _namespace_tenant(caller)  # members may read it; who may not, may not create jobs there
    tenant = args.tenant or own
    if tenant is None:
        print(
            f"error: cannot tell namespace {caller.namespace}'s tenant (no LocalQueue {LOCAL_QUEUE} there): "
            "pass --tenant, or -n with one of your tenant's namespaces",
            file=sys.stderr,
        )
        return Exit.USAGE
    if own is not None and args.tenant and args.tenant != own:
        print(
            f"error: namespace {caller.namespace} belongs to tenant {own}, not {args.tenant}: admission "
            f"judges an image under the tenant of the namespace the job is created in; use -n with one of "
            f"{args.tenant}'s namespaces, or drop --tenant",
            file=sys.stderr,
        )
        return Exit.USAGE
    body = views.minimal_job(f"verify-image-{uuid.uuid4().hex[:8]}", tenant, args.image)
    try:
        stored, warnings = caller.dry_run_create_job(caller.namespace, body)
        result = views.verification(args.image, tenant, caller.namespace, stored, warnings)
    except Refused as exc:
        result = views.verification(args.image, tenant, caller.namespace, None, [], exc.server_message)
    out.show(result.to_data(), result.lines)
    return result.exit


def cmd_events(caller: Caller, args: argparse.Namespace, out: Output) -> Exit:
    job = _job(caller, args.job)
    if job is None:
        return _missing(caller, args, out)
    events = caller.list_events(caller.namespace)
    rows = views.event_rows(job, events, pods=args.pods)
    out.show({"items": rows}, lambda: views.events_table(rows))
    return Exit.OK


COMMANDS: dict[str, Callable[[Caller, argparse.Namespace, Output], Exit]] = {
    "status": cmd_status,
    "why": cmd_why,
    "queue": cmd_queue,
    "quota": cmd_quota,
    "verify-image": cmd_verify_image,
    "events": cmd_events,
}


if __name__ == "__main__":
    sys.exit(main())
