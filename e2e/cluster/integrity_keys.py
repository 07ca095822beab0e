"""Getting a job's integrity key as its sidecar does: a token of the job's ServiceAccount, bound
to one of the job's pods (minted here with the TokenRequest API, as the kubelet would project it),
shown to the operator's key endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from e2e.cluster.harness import TenantSpace
from e2e.cluster.waiting import wait_for

AUDIENCE = "trainguard.dev/integrity"


def job_pods(space: TenantSpace, job: str, replicas: int) -> list[dict[str, Any]]:
    """The job's `replicas` live pods, in replica order (waits for them)."""

    def live() -> list[dict[str, Any]] | None:
        pods = [
            p
            for p in space.list("pods", f"trainguard.dev/job-name={job}")
            if not p["metadata"].get("deletionTimestamp")
        ]
        return pods if len(pods) == replicas else None

    pods = wait_for(f"the {replicas} pods of {job}", live)
    return sorted(pods, key=lambda p: int(p["metadata"]["labels"]["trainguard.dev/replica-index"]))


def mint_token(
    space: TenantSpace,
    account: str,
    pod: dict[str, Any] | None = None,
    *as_user: str,
    audience: str = AUDIENCE,
) -> tuple[int, str]:
    """`kubectl create token` for `account` (bound to `pod` when given), as the cluster admin or
    as `as_user` (kubectl flags): (exit status, the token or kubectl's complaint)."""
    args = ["create", "token", account, "-n", space.namespace, "--audience", audience, "--duration=10m"]
    if pod is not None:
        meta = pod["metadata"]
        args += [
            "--bound-object-kind=Pod",
            f"--bound-object-name={meta['name']}",
            f"--bound-object-uid={meta['uid']}",
        ]
    got = space.cluster.kubectl(*args, *as_user, check=False)
    return got.returncode, (got.stdout.strip() if got.returncode == 0 else got.stderr.strip())


def pod_token(space: TenantSpace, job: str, pod: dict[str, Any]) -> str:
    """The token the kubelet projects into the sidecar of `pod`."""
    status, token = mint_token(space, f"{job}-runner", pod)
    assert status == 0, token
    return token


def key_url(integrity_url: str, space: TenantSpace, job: str) -> str:
    return f"{integrity_url}/keys/{space.namespace}/{job}"


def request_key(url: str, token: str | None) -> tuple[int, dict[str, Any] | str]:
    """POST to the key endpoint with `token`: (HTTP status, the JSON answer or the refusal's text)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=b"", method="POST", headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - the operator on loopback
            answer: dict[str, Any] = json.loads(resp.read())
            return resp.status, answer
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def events(space: TenantSpace, reason: str) -> list[str]:
    """Type and message of the namespace's Events with `reason`."""
    out = space.cluster.kubectl(
        "get", "events", "-n", space.namespace, "--field-selector", f"reason={reason}", "-o", "json"
    ).stdout
    return [f"{e['type']}: {e['message']}" for e in json.loads(out)["items"]]
