"""Handing a job's key to its sidecars: who may ask (pure checks of the TokenReview and the pod),
each pod once, the record kept with the key, orphaned keys; and the sidecar's side of it."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from trainguard.api.models import TrainingJob
from trainguard.context import KeyDeliveries, KeyDelivery
from trainguard.handlers.integrity import (
    DELIVERED_PREFIX,
    PodIdentity,
    Refusal,
    TokenReviewStatus,
    bearer_token,
    check_pod,
    delivery_annotations,
    identify,
    orphaned_keys,
    recorded_deliveries,
    requested_twice,
)
from trainguard.sidecar.server import NoKey, fetch_key
from trainguard.sidecar.server import main as sidecar_main

JOB = TrainingJob.model_validate(
    {
        "metadata": {"name": "j", "namespace": "team-a", "uid": "job-uid", "generation": 1},
        "spec": {"tenant": "team-a", "image": "img", "replicas": 2, "resources": {"gpusPerReplica": 1}},
    }
)
RUNNER = "system:serviceaccount:team-a:j-runner"


def review(
    username: str = RUNNER,
    audiences: tuple[str, ...] = ("trainguard.dev/integrity",),
    pod: tuple[str, str] | None = ("j-0-a0", "pod-uid"),
    authenticated: bool = True,
) -> TokenReviewStatus:
    extra: dict[str, Any] = {"authentication.kubernetes.io/credential-id": ["JTI=abc"]}
    if pod:
        extra["authentication.kubernetes.io/pod-name"] = [pod[0]]
        extra["authentication.kubernetes.io/pod-uid"] = [pod[1]]
    # As the API server serves it: unknown fields (groups' details, future ones) are ignored.
    return TokenReviewStatus.model_validate(
        {
            "authenticated": authenticated,
            "user": {
                "username": username,
                "uid": "sa-uid",
                "groups": ["system:serviceaccounts"],
                "extra": extra,
            },
            "audiences": list(audiences),
            "somethingNew": True,
        }
    )


def job_pod(**meta: Any) -> dict[str, Any]:
    metadata = {
        "name": "j-0-a0",
        "uid": "pod-uid",
        "labels": {"app.kubernetes.io/managed-by": "trainguard"},
        "ownerReferences": [{"kind": "TrainingJob", "name": "j", "uid": "job-uid", "controller": True}],
        **meta,
    }
    return {"metadata": metadata, "spec": {"serviceAccountName": "j-runner"}}


WHO = PodIdentity("j-0-a0", "pod-uid", "JTI=abc")


def test_a_pod_bound_token_of_the_jobs_account_names_its_pod() -> None:
    assert identify(review(), "team-a", "j-runner") == WHO


@pytest.mark.parametrize(
    ("status", "outcome", "words"),
    [
        (review(authenticated=False), "unauthenticated", "not valid"),
        (review(audiences=("https://kubernetes.default.svc",)), "wrong_audience", "trainguard.dev/integrity"),
        (review(username="system:serviceaccount:team-a:default"), "wrong_account", "not the job's"),
        (review(username="editor-1"), "wrong_account", "editor-1"),
        (review(pod=None), "not_pod_bound", "bound to no pod"),
    ],
)
def test_tokens_that_prove_nothing_are_refused(status: TokenReviewStatus, outcome: str, words: str) -> None:
    refused = identify(status, "team-a", "j-runner")
    assert isinstance(refused, Refusal)
    assert refused.outcome == outcome
    assert refused.status in (401, 403)
    assert refused.reason == "IntegrityKeyRefused"
    assert words in refused.message


def test_only_a_pod_trainguard_made_for_the_job_may_ask() -> None:
    assert check_pod(job_pod(), WHO, JOB) is None
    gone = check_pod(None, WHO, JOB)
    assert gone is not None
    assert "does not exist" in gone.message
    # Same name, another pod (deleted and made again): the token is for the old one.
    assert check_pod(job_pod(uid="other"), WHO, JOB) is not None
    foreign = job_pod(ownerReferences=[])
    refused = check_pod(foreign, WHO, JOB)
    assert refused is not None
    assert refused.outcome == "not_job_pod"
    other_job = job_pod(ownerReferences=[{"kind": "TrainingJob", "uid": "other-job", "controller": True}])
    assert check_pod(other_job, WHO, JOB) is not None
    not_ours = job_pod(labels={})
    assert check_pod(not_ours, WHO, JOB) is not None
    other_account = {**job_pod(), "spec": {"serviceAccountName": "default"}}
    assert check_pod(other_account, WHO, JOB) is not None


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") == ""
    assert bearer_token("") == ""


def delivery(pod: str = "j-0-a0", credential: str = "JTI=one") -> KeyDelivery:
    return KeyDelivery(pod=pod, time="2026-01-01T00:00:00Z", credential=credential)


def test_each_pod_gets_the_key_once() -> None:
    ledger = KeyDeliveries()
    first = delivery()
    assert ledger.claim("job-uid", "pod-uid", first, {}) is None
    assert ledger.claim("job-uid", "pod-uid", delivery(credential="JTI=two"), {}) == first
    assert ledger.claim("job-uid", "other-pod", delivery("j-1-a0"), {}) is None
    # What the key's Secret remembers counts too (an operator restarted since).
    restarted = KeyDeliveries()
    assert restarted.claim("job-uid", "pod-uid", delivery(credential="JTI=two"), {"pod-uid": first}) == first
    # A claim that could not be recorded is released: the pod may ask again.
    ledger.release("job-uid", "other-pod")
    assert ledger.claim("job-uid", "other-pod", delivery("j-1-a0"), {}) is None
    ledger.keep_only("job-uid", ["pod-uid"])
    assert set(ledger.delivered["job-uid"]) == {"pod-uid"}
    ledger.forget("job-uid")
    assert ledger.delivered == {}


def test_the_record_kept_with_the_key_round_trips_and_drops_gone_pods() -> None:
    first = delivery()
    patch = delivery_annotations("pod-uid", first, recorded=["old-pod", "pod-uid"], live=["pod-uid"])
    assert patch == {
        f"{DELIVERED_PREFIX}old-pod": None,
        f"{DELIVERED_PREFIX}pod-uid": first.model_dump_json(),
    }
    secret = {
        "metadata": {
            "annotations": {
                f"{DELIVERED_PREFIX}pod-uid": first.model_dump_json(),
                f"{DELIVERED_PREFIX}broken": "not json",
                "unrelated": "x",
            }
        }
    }
    assert recorded_deliveries(secret) == {"pod-uid": first}
    assert recorded_deliveries(None) == {}


def test_a_second_request_names_both_tokens() -> None:
    refused = requested_twice(WHO, delivery(credential="JTI=one"), delivery(credential="JTI=two"), "j-runner")
    assert refused.status == 409
    assert refused.reason == "IntegrityKeyRequestedTwice"
    assert "JTI=one" in refused.message
    assert "JTI=two" in refused.message
    assert "j-0-a0" in refused.message
    assert "pod-uid" in refused.message


def test_keys_of_jobs_that_are_gone_are_orphans() -> None:
    def key(name: str, uid: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {"trainguard.dev/job-uid": uid}}}

    secrets = [key("integrity-key-a", "a"), key("integrity-key-b", "b"), {"metadata": {"name": "unlabelled"}}]
    assert orphaned_keys(secrets, ["a"]) == ["integrity-key-b", "unlabelled"]


# --------------------------------------------------------------------------- the sidecar's side


class Operator(http.server.BaseHTTPRequestHandler):
    """Answers key requests from a script: (status, body) per request; records what it saw."""

    script: ClassVar[list[tuple[int, dict[str, Any]]]] = []
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        status, body = self.script.pop(0) if self.script else (500, {})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        return


@pytest.fixture
def operator() -> Iterator[tuple[str, type[Operator]]]:
    handler = type("ScriptedOperator", (Operator,), {"script": [], "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/keys/team-a/j", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("pod-token\n")
    return path


KEY = bytes(range(32))


def test_the_sidecar_shows_its_token_and_gets_the_key(
    operator: tuple[str, type[Operator]], token: Path
) -> None:
    url, handler = operator
    handler.script += [(503, {}), (200, {"key": base64.b64encode(KEY).decode()})]
    assert fetch_key(url, token, first_delay=0.01) == KEY
    assert handler.seen == ["Bearer pod-token", "Bearer pod-token"]


def test_a_refusal_is_final_and_says_why(operator: tuple[str, type[Operator]], token: Path) -> None:
    url, handler = operator
    handler.script += [(409, {"why": "asked twice"}), (200, {"key": base64.b64encode(KEY).decode()})]
    with pytest.raises(NoKey, match="409"):
        fetch_key(url, token, first_delay=0.01)
    assert len(handler.seen) == 1


def test_a_sidecar_without_a_key_exits_non_zero(
    operator: tuple[str, type[Operator]],
    token: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, handler = operator
    handler.script += [(403, {})]
    monkeypatch.setattr("trainguard.sidecar.server.harden_process", lambda: 0)  # not this test process
    argv = ["--socket", str(tmp_path / "s.sock"), "--key-url", url, "--token-file", str(token)]
    assert sidecar_main(argv) != 0
    assert "no integrity key for this pod" in capsys.readouterr().err
    assert not (tmp_path / "s.sock").exists(), "no socket: the startup probe keeps failing, visibly"


def test_an_unreachable_operator_is_retried_then_given_up(token: Path) -> None:
    with pytest.raises(NoKey, match="after 3 attempts"):
        fetch_key("http://127.0.0.1:9/keys/a/b", token, attempts=3, first_delay=0.01)


def test_a_short_key_is_refused(operator: tuple[str, type[Operator]], token: Path) -> None:
    url, handler = operator
    handler.script += [(200, {"key": base64.b64encode(b"short").decode()})]
    with pytest.raises(NoKey, match="fewer than 32"):
        fetch_key(url, token, first_delay=0.01)
