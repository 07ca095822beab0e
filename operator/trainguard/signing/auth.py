"""Registry credentials and the OCI distribution auth flows' pure parts. No I/O.

What is here: docker config JSON (`auths`, as in a `kubernetes.io/dockerconfigjson` Secret or
`~/.docker/config.json`) parsed into credentials, matched to a registry the way docker matches
them (by `host[:port]`); `WWW-Authenticate` challenges parsed; the pull scope of a repository;
the token endpoint's answer parsed.

Credentials never appear in a message, a `repr` or a cache key: they are named by where they came
from (`Secret team-a/regcred`) and told apart by a keyed hash (`Credential.identity`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Docker Hub goes by several names; docker files its credentials under the legacy index URL.
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")

# A per-process key for credential identities: equal credentials compare equal within the
# process, and nothing kept in memory can be checked against a guessed password elsewhere.
_IDENTITY_KEY = os.urandom(32)

MAX_CONFIG_BYTES = 256 * 1024


class CredentialsInvalid(ValueError):
    """A docker config that cannot be used; the message names no secret value."""


@dataclass(frozen=True)
class Credential:
    """What to show one registry. `source` says where it came from, for messages
    (e.g. "Secret team-a/regcred"); the values never leave this object except as headers."""

    source: str
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    @property
    def identity(self) -> str:
        """Tells credentials apart in cache keys without revealing them: the source, and a keyed
        hash of the values (a Secret updated with other credentials is another identity)."""
        values = "\0".join((self.username, self.password, self.identity_token)).encode()
        digest = hmac.new(_IDENTITY_KEY, values, hashlib.sha256).hexdigest()[:32]
        return f"{self.source}#{digest}"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


ANONYMOUS = "anonymous"


def identity_of(credential: Credential | None) -> str:
    return credential.identity if credential is not None else ANONYMOUS


def registry_host(key: str) -> str:
    """The `host[:port]` a docker config key names, as docker reads it: without scheme and path,
    lower case; Docker Hub's aliases are one host."""
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0].lower()
    return "docker.io" if host in _DOCKER_HUB else host


def parse_docker_config(raw: bytes | str, source: str) -> dict[str, Credential]:
    """`auths` of a docker config JSON -> registry host -> credential. `source` names the file or
    Secret in messages. Also takes the legacy `.dockercfg` layout (the `auths` map itself)."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise CredentialsInvalid(f"{source} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CredentialsInvalid(f"{source} is not JSON") from exc
    if not isinstance(document, dict):
        raise CredentialsInvalid(f"{source} is not a JSON object with an `auths` map")
    if "auths" in document:
        auths = document["auths"]
    elif all(isinstance(v, dict) for v in document.values()):
        auths = document  # the legacy .dockercfg layout: the map itself
    else:
        auths = {}  # a config of credential helpers only: no credentials here
    if not isinstance(auths, dict):
        raise CredentialsInvalid(f"{source}: `auths` is not a map of registry to credentials")
    found: dict[str, Credential] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise CredentialsInvalid(f"{source}: the entry for {key!r} is not an object")
        credential = _entry(key, entry, source)
        if credential is not None:
            found.setdefault(registry_host(key), credential)  # docker: the first spelling wins
    return found


def _entry(key: str, entry: Mapping[str, Any], source: str) -> Credential | None:
    username, password = entry.get("username") or "", entry.get("password") or ""
    token = entry.get("identitytoken") or ""
    if not all(isinstance(v, str) for v in (username, password, token)):
        raise CredentialsInvalid(f"{source}: the entry for {key!r} has a value that is not a string")
    encoded = entry.get("auth") or ""
    if encoded:
        if not isinstance(encoded, str):
            raise CredentialsInvalid(f"{source}: `auth` of {key!r} is not a string")
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CredentialsInvalid(f"{source}: `auth` of {key!r} is not base64 of user:password") from exc
        if ":" not in decoded:
            raise CredentialsInvalid(f"{source}: `auth` of {key!r} is not base64 of user:password")
        username, password = decoded.split(":", 1)
    if not (username or password or token):
        return None  # an empty entry (docker writes these for credential helpers): no credentials
    return Credential(source, username, password, token)


DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
DOCKER_CFG = "kubernetes.io/dockercfg"
_SECRET_KEYS = {DOCKER_CONFIG_JSON: ".dockerconfigjson", DOCKER_CFG: ".dockercfg"}


def parse_pull_secret(secret: Mapping[str, Any], source: str) -> dict[str, Credential]:
    """The credentials of an image pull Secret as the API server returns it (base64 `data`), of
    either type the kubelet accepts."""
    kind = secret.get("type")
    key = _SECRET_KEYS.get(str(kind))
    if key is None:
        raise CredentialsInvalid(
            f"{source} is of type {kind!r}, not {DOCKER_CONFIG_JSON} (an image pull Secret)"
        )
    encoded = (secret.get("data") or {}).get(key)
    if not isinstance(encoded, str) or not encoded:
        raise CredentialsInvalid(f"{source} has no {key} key")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise CredentialsInvalid(f"{source}: {key} is not base64") from exc
    found = parse_docker_config(raw, f"{source} ({key})")
    return {host: dataclasses.replace(c, source=source) for host, c in found.items()}


@dataclass(frozen=True)
class Keychain:
    """Where credentials for a registry come from: the tenant's pull Secret first, then the
    operator's own file; none: anonymous."""

    tenant: Mapping[str, Credential] = field(default_factory=dict)
    operator: Mapping[str, Credential] = field(default_factory=dict)
    # Set when the tenant names a pull Secret: what to tell a user whose registry wants one.
    tenant_source: str = ""

    def for_registry(self, registry: str) -> Credential | None:
        host = registry_host(registry)
        return self.tenant.get(host) or self.operator.get(host)


# --------------------------------------------------------------------------- challenges and tokens


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer"
    params: Mapping[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


_PARAM = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^\s,]*)\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a `WWW-Authenticate` header (RFC 7235: a scheme, then
    `name=value` or `name="quoted value"` parameters); None when there is none."""
    text = header.strip()
    scheme, _, rest = text.partition(" ")
    if not scheme or "=" in scheme:
        return None
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        found = _PARAM.match(rest, position)
        if found is None or found.end() == position:
            break  # a second challenge, or junk: the first is enough
        quoted = found.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else found.group(2)
        params.setdefault(found.group(1).lower(), value)
        position = found.end()
    return Challenge(scheme.lower(), params)


def pull_scope(repository: str) -> str:
    """The token scope that lets a client read `repository` and nothing else."""
    return f"repository:{repository}:pull"


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    expires_in: float


DEFAULT_TOKEN_SECONDS = 60.0  # the distribution token spec's default when `expires_in` is absent


def parse_token_response(body: bytes) -> Token:
    """The token endpoint's answer: `token` (or OAuth2's `access_token`) and `expires_in`."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CredentialsInvalid("the token endpoint's answer is not JSON") from exc
    if not isinstance(document, dict):
        raise CredentialsInvalid("the token endpoint's answer is not a JSON object")
    token = document.get("token") or document.get("access_token")
    if not isinstance(token, str) or not token:
        raise CredentialsInvalid("the token endpoint's answer holds no token")
    expires = document.get("expires_in")
    seconds = float(expires) if isinstance(expires, int | float) and expires > 0 else DEFAULT_TOKEN_SECONDS
    return Token(token, seconds)
