"""A small, bounded OCI distribution client: manifests, blobs and referrers, nothing else.

Every response is size-capped and every request has a timeout; content is checked against the
digest that addressed it. Registries listed as plain-HTTP (a loopback test registry) are spoken
to over http; all others over https.

Authentication follows the registry's `401` challenge: Basic with the credential given, or a
Bearer token from the challenge's realm, asked for `repository:<name>:pull` only (anonymously when
no credential is given: public images on Docker Hub, ghcr.io and the like need such tokens too).
Tokens are kept until shortly before they expire, per (registry, repository, credential identity),
so one tenant's token is never shown for another tenant's request. The Authorization header is
never sent on after a redirect (blobs are often served from another host).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import urllib3

from trainguard.settings import IO_THREADS
from trainguard.signing.auth import (
    Challenge,
    Credential,
    CredentialsInvalid,
    identity_of,
    parse_challenge,
    parse_token_response,
    pull_scope,
)

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


class RegistryError(Exception):
    """The registry could not be read (down, slow, too large, inconsistent)."""


class RegistryAuthError(RegistryError):
    """The registry refused to let us read (401 or 403): no credentials, or the wrong ones.
    The message names where the credentials came from, never their values."""

    def __init__(self, registry: str, repository: str, status: int, credential: Credential | None) -> None:
        self.registry, self.repository, self.status, self.credential = (
            registry,
            repository,
            status,
            credential,
        )
        if credential is not None:
            message = f"registry {registry} refused the credentials in {credential.source} ({status})"
        else:
            message = (
                f"registry {registry} refused to let {repository} be read without credentials ({status})"
            )
        super().__init__(message)


_AuthKey = tuple[str, str, str]  # (registry, repository, credential identity)


@dataclass(frozen=True)
class Fetched:
    body: bytes
    digest: str


_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class _Request:
    url: str
    headers: dict[str, str]
    authorization: str | None  # sent to `url` only, never after a redirect
    method: str = "GET"
    body: bytes | None = None


def _reason(exc: BaseException) -> str:
    """What went wrong, without urllib3's connection object in front."""
    text = str(getattr(exc, "reason", None) or exc)
    if text.startswith(("HTTPConnection(", "HTTPSConnection(")) and "): " in text:
        return text.split("): ", 1)[1]
    return text


def _pool() -> urllib3.PoolManager:
    # Connections kept per registry host: as many as the threads that verify (IO_THREADS); more
    # concurrent requests than that open extra ones rather than wait.
    return urllib3.PoolManager(num_pools=64, maxsize=IO_THREADS, block=False)


@dataclass
class RegistryClient:
    plain_http: frozenset[str] = field(default_factory=frozenset)
    timeout: float = 2.0
    max_manifest_bytes: int = 256 * 1024
    max_blob_bytes: int = 64 * 1024
    max_descriptors: int = 16
    max_token_bytes: int = 64 * 1024
    # Authorization headers that worked: key -> (monotonic expiry, header value).
    _auth: dict[_AuthKey, tuple[float, str]] = field(default_factory=dict, repr=False)
    _auth_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    max_auth_entries: int = 4096
    _pool: urllib3.PoolManager = field(default_factory=_pool, repr=False)

    def _url(self, registry: str, path: str) -> str:
        scheme = "http" if registry in self.plain_http else "https"
        return f"{scheme}://{registry}/v2/{path}"

    def _fetch(
        self, registry: str, request: _Request, limit: int, what: str
    ) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, lower-case headers): 2xx, and 401/403/404 as answers; anything else raises.
        Connections are kept alive per host (`_pool`): a cold verification's requests, and the next
        verification's, reuse one. Redirects are followed (a blob served from storage elsewhere),
        never carrying the Authorization header on."""
        url, method, body, authorization = request.url, request.method, request.body, request.authorization
        for _hop in range(_MAX_REDIRECTS + 1):
            headers = dict(request.headers)
            if authorization:
                headers["Authorization"] = authorization
            try:
                resp = self._pool.request(
                    method,
                    url,
                    body=body,
                    headers=headers,
                    timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
                    redirect=False,
                    retries=False,
                    preload_content=False,
                )
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise RegistryError(f"registry {registry} cannot be reached: {_reason(exc)}") from exc
            try:
                location = resp.headers.get("location")
                if resp.status in (301, 302, 303, 307, 308) and location:
                    resp.drain_conn()
                    url, authorization = urllib.parse.urljoin(url, location), None
                    if resp.status == 303:
                        method, body = "GET", None
                    continue
                answer = {k.lower(): v for k, v in resp.headers.items()}
                if resp.status in (401, 403, 404):
                    resp.drain_conn()
                    return resp.status, b"", answer
                if not 200 <= resp.status < 300:
                    resp.drain_conn()
                    raise RegistryError(f"registry {registry} answered {resp.status} for {what}")
                try:
                    content = resp.read(limit + 1)
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise RegistryError(f"registry {registry} cannot be reached: {_reason(exc)}") from exc
                if len(content) > limit:
                    resp.close()  # the rest unread: this connection cannot be reused
                    raise RegistryError(f"{what} on {registry} is larger than {limit} bytes")
                return resp.status, content, answer
            finally:
                resp.release_conn()
        raise RegistryError(f"registry {registry} redirected {what} more than {_MAX_REDIRECTS} times")

    def _request(self, url: str, accept: str, authorization: str | None) -> _Request:
        return _Request(url, {"Accept": accept}, authorization)

    def _get(
        self,
        registry: str,
        repository: str,
        path: str,
        accept: str,
        limit: int,
        credential: Credential | None = None,
    ) -> tuple[bytes, dict[str, str]] | None:
        key = (registry, repository, identity_of(credential))
        url = self._url(registry, f"{repository}/{path}")
        what = f"{repository}/{path}"
        status, body, headers = self._fetch(
            registry, self._request(url, accept, self._known(key)), limit, what
        )
        if status == 401:
            challenge = parse_challenge(headers.get("www-authenticate", ""))
            authorization = self._authorize(registry, repository, challenge, credential)
            status, body, headers = self._fetch(
                registry, self._request(url, accept, authorization), limit, what
            )
        if status in (401, 403):
            self._forget(key)
            raise RegistryAuthError(registry, repository, status, credential)
        if status == 404:
            return None
        return body, headers

    # ----------------------------------------------------------------------- authentication

    def _known(self, key: _AuthKey) -> str | None:
        with self._auth_lock:
            hit = self._auth.get(key)
            if hit is None or hit[0] < time.monotonic():
                self._auth.pop(key, None)
                return None
            return hit[1]

    def _remember(self, key: _AuthKey, authorization: str, seconds: float) -> None:
        with self._auth_lock:
            if len(self._auth) >= self.max_auth_entries:
                self._auth.pop(next(iter(self._auth)))
            self._auth[key] = (time.monotonic() + seconds, authorization)

    def _forget(self, key: _AuthKey) -> None:
        with self._auth_lock:
            self._auth.pop(key, None)

    def _authorize(
        self, registry: str, repository: str, challenge: Challenge | None, credential: Credential | None
    ) -> str:
        """The Authorization header the registry's challenge asks for, remembered for next time."""
        key = (registry, repository, identity_of(credential))
        if challenge is not None and challenge.scheme == "basic":
            if credential is None or not (credential.username or credential.password):
                raise RegistryAuthError(registry, repository, 401, credential)
            authorization = credential.basic_header()
            self._remember(key, authorization, 3600.0)
            return authorization
        if challenge is None or challenge.scheme != "bearer" or not challenge.realm:
            raise RegistryError(
                f"registry {registry} asks for an authentication scheme trainguard does not speak "
                "(only Basic and Bearer tokens)"
            )
        token, seconds = self._token(registry, repository, challenge, credential)
        authorization = f"Bearer {token}"
        # Ask again a little before the token expires: it must still be valid when it arrives.
        self._remember(key, authorization, max(seconds - min(10.0, seconds / 10), 1.0))
        return authorization

    def _token(
        self, registry: str, repository: str, challenge: Challenge, credential: Credential | None
    ) -> tuple[str, float]:
        realm = urllib.parse.urlsplit(challenge.realm)
        plain = registry in self.plain_http
        if realm.scheme != "https" and not (plain and realm.scheme == "http"):
            raise RegistryError(
                f"registry {registry} names a token realm that is not https; trainguard sends no "
                "credentials there"
            )
        query = {"scope": pull_scope(repository)}
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        if credential is not None and credential.identity_token:
            # docker's way with an identity token: the OAuth2 refresh-token grant, by POST.
            form = {**query, "grant_type": "refresh_token", "refresh_token": credential.identity_token}
            form["client_id"] = "trainguard"
            request = _Request(  # the realm is http(s), checked above
                challenge.realm,
                {"Content-Type": "application/x-www-form-urlencoded"},
                None,
                method="POST",
                body=urllib.parse.urlencode(form).encode(),
            )
        else:
            separator = "&" if realm.query else "?"
            url = challenge.realm + separator + urllib.parse.urlencode(query)
            basic = (
                credential.basic_header()
                if credential and (credential.username or credential.password)
                else None
            )
            request = self._request(url, "application/json", basic)
        status, body, _ = self._fetch(registry, request, self.max_token_bytes, "the token endpoint")
        if status in (401, 403):
            raise RegistryAuthError(registry, repository, status, credential)
        if status == 404:
            raise RegistryError(f"the token endpoint of registry {registry} answered 404")
        try:
            token = parse_token_response(body)
        except CredentialsInvalid as exc:
            raise RegistryError(f"registry {registry}: {exc}") from exc
        return token.value, token.expires_in

    # ----------------------------------------------------------------------- content

    def manifest(
        self, registry: str, repository: str, reference: str, credential: Credential | None = None
    ) -> Fetched | None:
        """The manifest at a tag or digest; None when absent. A digest reference is checked."""
        got = self._get(
            registry,
            repository,
            f"manifests/{reference}",
            MANIFEST_TYPES,
            self.max_manifest_bytes,
            credential,
        )
        if got is None:
            return None
        body, headers = got
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"registry {registry} served content for {reference} that hashes to {digest}")
        served = headers.get("docker-content-digest")
        if served and served != digest:
            raise RegistryError(
                f"registry {registry} claims digest {served} for content that hashes to {digest}"
            )
        return Fetched(body, digest)

    def blob(
        self, registry: str, repository: str, digest: str, credential: Credential | None = None
    ) -> bytes:
        got = self._get(registry, repository, f"blobs/{digest}", "*/*", self.max_blob_bytes, credential)
        if got is None:
            raise RegistryError(f"blob {digest} is missing from {registry}/{repository}")
        body = got[0]
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RegistryError(f"blob {digest} on {registry} does not match its digest")
        return body

    def referrers(
        self,
        registry: str,
        repository: str,
        digest: str,
        artifact_type: str,
        credential: Credential | None = None,
    ) -> list[dict[str, Any]]:
        """Descriptors of artifacts attached to `digest`: the referrers API, else the tag fallback."""
        index: bytes | None = None
        try:
            got = self._get(
                registry,
                repository,
                f"referrers/{digest}",
                "application/vnd.oci.image.index.v1+json",
                self.max_manifest_bytes,
                credential,
            )
            index = got[0] if got else None
        except RegistryAuthError:
            raise
        except RegistryError:
            index = None  # registries without the referrers API answer 400/405: use the tag schema
        if index is None:
            fallback = self.manifest(registry, repository, digest.replace(":", "-"), credential)
            index = fallback.body if fallback else None
        if index is None:
            return []
        try:
            manifests = json.loads(index).get("manifests", [])
        except ValueError as exc:
            raise RegistryError(f"the referrers index for {digest} is not JSON") from exc
        found = [m for m in manifests if isinstance(m, dict) and m.get("artifactType") == artifact_type]
        return found[: self.max_descriptors]
