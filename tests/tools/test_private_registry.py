"""Image verification against registries that want credentials: the real distribution registry with
htpasswd (Basic), and a Bearer token flow; images pushed with crane and signed with the real cosign.

The Bearer flow runs against a small loopback gate written here (the distribution registry's own
`auth: token` needs a token server signing JWTs against a certificate bundle): it answers every
request without a valid token with a real `WWW-Authenticate: Bearer realm=…,service=…,scope=…`
challenge, issues tokens at its realm for Basic credentials, each good for one repository's pull
scope, and passes requests with a valid token on to a real registry behind it.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from e2e.cluster.registry import AuthRegistry, CosignKey, Registry
from e2e.cluster.waiting import free_port
from trainguard.signing.auth import Credential, Keychain
from trainguard.signing.cosign import Signer
from trainguard.signing.registry import RegistryClient
from trainguard.signing.verifier import VerificationFailed, Verifier

PASSWORD = "correct-horse-" + "battery"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> CosignKey:
    return CosignKey.generate(tmp_path_factory.mktemp("keys"), "release")


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    reg = AuthRegistry(
        free_port(), tmp_path_factory.mktemp("auth-registry"), users={"alice": PASSWORD}
    ).start()
    yield reg
    reg.stop()


def signer(key: CosignKey) -> Signer:
    return Signer.from_pem("release", key.public.read_text())


def keychain(host: str, source: str, user: str | None, password: str = PASSWORD) -> Keychain:
    """What TenantImages builds from a tenant's pull Secret `source` (an entry for `host`, or none)."""
    entries = {host: Credential(source, user, password)} if user else {}
    return Keychain(tenant=entries, tenant_source=source)


def push_signed(reg: Registry, repository: str, key: CosignKey) -> str:
    digest = reg.push(repository, "v1", f"{repository} {secrets.token_hex(4)}")
    key.sign(f"{reg.host}/{repository}@{digest}", "classic", reg.docker_config)
    return digest


def refusal(verifier: Verifier, image: str, key: CosignKey, chain: Keychain | None) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as caught:
        verifier.verify(image, [signer(key)], chain)
    return caught.value


def test_basic_right_credentials_verify_and_missing_or_wrong_ones_name_the_secret(
    basic: AuthRegistry, key: CosignKey
) -> None:
    digest = push_signed(basic, "team-a/private", key)
    image = f"{basic.host}/team-a/private:v1"
    verifier = Verifier(RegistryClient(plain_http=frozenset({basic.host}), timeout=2.0))

    verified = verifier.verify(image, [signer(key)], keychain(basic.host, "Secret team-a/regcred", "alice"))
    assert (verified.digest, verified.signer) == (digest, "release")

    wrong = refusal(verifier, image, key, keychain(basic.host, "Secret team-b/regcred", "alice", "guess"))
    assert wrong.reason == "RegistryAuthFailed"
    assert f"registry {basic.host} refused the credentials in Secret team-b/regcred (401)" in str(wrong)
    assert "guess" not in str(wrong)
    assert PASSWORD not in str(wrong)

    no_entry = refusal(verifier, image, key, keychain(basic.host, "Secret team-b/regcred", None))
    assert no_entry.reason == "RegistryAuthFailed"
    assert f"Secret team-b/regcred has no credentials for {basic.host}" in str(no_entry)

    anonymous = refusal(verifier, image, key, None)
    assert "the tenant names no pull Secret (spec.imagePullSecret)" in str(anonymous)


def test_a_verdict_reached_with_one_tenants_credentials_is_not_reused_for_another(
    basic: AuthRegistry, key: CosignKey
) -> None:
    digest = push_signed(basic, "team-a/only-a", key)
    verifier = Verifier(RegistryClient(plain_http=frozenset({basic.host}), timeout=2.0))
    team_a = keychain(basic.host, "Secret team-a/regcred", "alice")
    pinned = verifier.verify(f"{basic.host}/team-a/only-a:v1", [signer(key)], team_a).pinned
    assert verifier.verify(f"{basic.host}/team-a/only-a@{digest}", [signer(key)], team_a).cached

    # Right after: the same signers, the same digest, by tag and by digest; B has no credentials
    # for the registry, or wrong ones. Neither the verdict nor the tag's resolution carries over.
    for chain in (
        keychain(basic.host, "Secret team-b/regcred", None),
        keychain(basic.host, "Secret team-b/regcred", "alice", "not-alices"),
        None,
    ):
        for image in (pinned, f"{basic.host}/team-a/only-a@{digest}", f"{basic.host}/team-a/only-a:v1"):
            assert refusal(verifier, image, key, chain).reason == "RegistryAuthFailed"


# --------------------------------------------------------------------------- Bearer tokens


@dataclass
class BearerGate:
    """A registry front that wants Bearer tokens, and their token endpoint, on one loopback port."""

    backend: str  # host:port of the real (anonymous) registry behind it
    users: dict[str, str]
    token_seconds: int = 300
    tokens: dict[str, str] = field(default_factory=dict)  # token -> the scope it grants
    token_requests: list[dict[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> BearerGate:
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/token":
                    self._token(dict(urllib.parse.parse_qsl(url.query)))
                    return
                self._registry(url)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                refresh = form.get("refresh_token")
                granted = refresh == "refresh-" + gate.users.get("alice", "")
                self._grant(form, granted)

            def _token(self, query: dict[str, str]) -> None:
                basic = self.headers.get("Authorization", "")
                granted = False
                if basic.startswith("Basic "):
                    user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
                    granted = gate.users.get(user) == password
                self._grant(query, granted)

            def _grant(self, query: dict[str, str], granted: bool) -> None:
                gate.token_requests.append(query)
                if not granted:
                    self._answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
                    return
                token = secrets.token_urlsafe(16)
                gate.tokens[token] = query.get("scope", "")
                body = {"token": token, "expires_in": gate.token_seconds}
                self._answer(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

            def _registry(self, url: urllib.parse.SplitResult) -> None:
                parts = url.path.split("/")
                kind = next(
                    (i for i, p in enumerate(parts) if p in ("manifests", "blobs", "referrers")), None
                )
                repository = "/".join(parts[2:kind]) if kind else ""
                scope = f"repository:{repository}:pull"
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Bearer ") or gate.tokens.get(auth[7:]) != scope:
                    challenge = f'Bearer realm="http://{gate.host}/token",service="gate",scope="{scope}"'
                    self._answer(401, b"{}", {"WWW-Authenticate": challenge})
                    return
                forward = urllib.request.Request(
                    f"http://{gate.backend}{self.path}", headers={"Accept": self.headers.get("Accept", "*/*")}
                )
                try:
                    with urllib.request.urlopen(forward, timeout=5) as resp:  # noqa: S310
                        headers = {"Content-Type": resp.headers.get("Content-Type", "")}
                        if resp.headers.get("Docker-Content-Digest"):
                            headers["Docker-Content-Digest"] = resp.headers["Docker-Content-Digest"]
                        self._answer(resp.status, resp.read(), headers)
                except urllib.error.HTTPError as exc:
                    self._answer(exc.code, exc.read())

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(free_port(), tmp_path_factory.mktemp("backend")).start()
    yield reg
    reg.stop()


@pytest.fixture
def gate(backend: Registry) -> Iterator[BearerGate]:
    front = BearerGate(backend.host, {"alice": PASSWORD}).start()
    yield front
    front.stop()


def test_bearer_tokens_are_scoped_to_the_repository_and_kept_until_they_expire(
    backend: Registry, gate: BearerGate, key: CosignKey
) -> None:
    digest = push_signed(backend, "team-a/bearer", key)
    other = push_signed(backend, "team-a/other", key)
    verifier = Verifier(RegistryClient(plain_http=frozenset({gate.host}), timeout=2.0))
    chain = keychain(gate.host, "Secret team-a/regcred", "alice")

    assert verifier.verify(f"{gate.host}/team-a/bearer:v1", [signer(key)], chain).digest == digest
    # One token for the manifest, the signature's manifest and its blob: asked once, for pull only.
    assert gate.token_requests == [{"scope": "repository:team-a/bearer:pull", "service": "gate"}]
    # Another repository needs a token of its own: the first one does not open it.
    assert verifier.verify(f"{gate.host}/team-a/other:v1", [signer(key)], chain).digest == other
    assert [r["scope"] for r in gate.token_requests] == [
        "repository:team-a/bearer:pull",
        "repository:team-a/other:pull",
    ]
    # A tag is resolved afresh each time, with the kept token.
    verifier.verify(f"{gate.host}/team-a/bearer:v1", [signer(key)], chain)
    assert len(gate.token_requests) == 2


def test_bearer_wrong_or_missing_credentials_are_refused_naming_the_secret(
    backend: Registry, gate: BearerGate, key: CosignKey
) -> None:
    push_signed(backend, "team-a/bearer-private", key)
    image = f"{gate.host}/team-a/bearer-private:v1"
    verifier = Verifier(RegistryClient(plain_http=frozenset({gate.host}), timeout=2.0))
    verifier.verify(image, [signer(key)], keychain(gate.host, "Secret team-a/regcred", "alice"))

    wrong = refusal(verifier, image, key, keychain(gate.host, "Secret team-b/regcred", "alice", "nope"))
    assert wrong.reason == "RegistryAuthFailed"
    assert f"registry {gate.host} refused the credentials in Secret team-b/regcred (401)" in str(wrong)
    # Without credentials the client asks for an anonymous token, which this gate refuses.
    anonymous = refusal(verifier, image, key, None)
    assert anonymous.reason == "RegistryAuthFailed"
    assert {r["scope"] for r in gate.token_requests} == {"repository:team-a/bearer-private:pull"}


def test_an_identity_token_is_exchanged_by_the_refresh_token_grant(
    backend: Registry, gate: BearerGate, key: CosignKey
) -> None:
    digest = push_signed(backend, "team-a/identity", key)
    verifier = Verifier(RegistryClient(plain_http=frozenset({gate.host}), timeout=2.0))
    chain = Keychain(tenant={gate.host: Credential("Secret team-a/regcred", "", "", "refresh-" + PASSWORD)})
    assert verifier.verify(f"{gate.host}/team-a/identity:v1", [signer(key)], chain).digest == digest
    assert gate.token_requests[0]["grant_type"] == "refresh_token"
    assert gate.token_requests[0]["scope"] == "repository:team-a/identity:pull"


def test_a_token_realm_over_plain_http_gets_no_credentials_from_an_https_registry(tmp_path: Path) -> None:
    """A registry spoken to over https whose challenge points at an http realm: the credentials stay home."""
    from trainguard.signing.auth import Challenge
    from trainguard.signing.registry import RegistryError

    client = RegistryClient(timeout=1.0)
    challenge = Challenge("bearer", {"realm": "http://evil.example/token"})
    with pytest.raises(RegistryError, match="not https"):
        client._authorize("reg.example.com", "team/app", challenge, Credential("Secret a/b", "u", "p"))
