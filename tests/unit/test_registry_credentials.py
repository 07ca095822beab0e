"""The pure parts of registry authentication: docker configs, host matching, challenges, scopes,
tokens, pull Secrets, the pods' imagePullSecrets and the fix a denial gives."""

from __future__ import annotations

import base64
import json

import pytest

from trainguard.api.models import Tenant
from trainguard.policy.images import image_error
from trainguard.signing.auth import (
    ANONYMOUS,
    Credential,
    CredentialsInvalid,
    Keychain,
    parse_challenge,
    parse_docker_config,
    parse_pull_secret,
    parse_token_response,
    pull_scope,
    registry_host,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def config(auths: dict[str, object]) -> str:
    return json.dumps({"auths": auths})


def test_auth_field_and_username_password_are_both_read() -> None:
    found = parse_docker_config(
        config(
            {
                "reg.example.com": {"auth": b64("alice:s3cr:et")},
                "https://other.example.com:5000/v2/": {
                    "username": "bob",
                    "password": "pw",
                    "identitytoken": "rt",
                },
            }
        ),
        "Secret a/b",
    )
    assert set(found) == {"reg.example.com", "other.example.com:5000"}
    alice = found["reg.example.com"]
    assert (alice.username, alice.password) == ("alice", "s3cr:et")  # only the first colon splits
    bob = found["other.example.com:5000"]
    assert (bob.username, bob.password, bob.identity_token) == ("bob", "pw", "rt")
    assert alice.source == "Secret a/b"


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("reg.example.com", "reg.example.com"),
        ("REG.example.com:443", "reg.example.com:443"),
        ("https://reg.example.com/v1/", "reg.example.com"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
    ],
)
def test_registry_keys_match_as_docker_matches_them(key: str, host: str) -> None:
    assert registry_host(key) == host


def test_a_port_is_part_of_the_host() -> None:
    keychain = Keychain(
        tenant=parse_docker_config(config({"reg.example.com:5000": {"auth": b64("a:b")}}), "s")
    )
    assert keychain.for_registry("reg.example.com:5000") is not None
    assert keychain.for_registry("reg.example.com") is None
    assert keychain.for_registry("reg.example.com:5001") is None


def test_the_tenant_secret_wins_and_the_operator_file_covers_the_rest() -> None:
    tenant = parse_docker_config(config({"a.example.com": {"auth": b64("t:1")}}), "Secret ns/regcred")
    operator = parse_docker_config(
        config({"a.example.com": {"auth": b64("o:1")}, "b.example.com": {"auth": b64("o:2")}}), "file"
    )
    keychain = Keychain(tenant=tenant, operator=operator, tenant_source="Secret ns/regcred")
    assert keychain.for_registry("a.example.com").source == "Secret ns/regcred"  # type: ignore[union-attr]
    assert keychain.for_registry("b.example.com").source == "file"  # type: ignore[union-attr]
    assert keychain.for_registry("c.example.com") is None


def test_credentials_never_show_in_repr_or_identity() -> None:
    credential = Credential("Secret ns/regcred", "alice", "hunter2-secret", "refresh-xyz")
    shown = repr(credential) + credential.identity
    assert "hunter2" not in shown
    assert "alice" not in shown
    assert "refresh-xyz" not in shown
    assert credential.identity.startswith("Secret ns/regcred#")
    # Same values, same identity; other values (an updated Secret), another identity.
    assert (
        Credential("Secret ns/regcred", "alice", "hunter2-secret", "refresh-xyz").identity
        == credential.identity
    )
    assert Credential("Secret ns/regcred", "alice", "other").identity != credential.identity
    assert (
        Credential("Secret other/regcred", "alice", "hunter2-secret", "refresh-xyz").identity
        != credential.identity
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("not json", "is not JSON"),
        ("[]", "not a JSON object"),
        ('{"auths": []}', "is not a map"),
        ('{"auths": {"r": "x"}}', "is not an object"),
        ('{"auths": {"r": {"auth": "%%%"}}}', "not base64"),
        ('{"auths": {"r": {"auth": "' + b64("no-colon") + '"}}}', "not base64 of user:password"),
        ('{"auths": {"r": {"username": 3}}}', "not a string"),
    ],
)
def test_malformed_configs_are_refused_without_their_values(raw: str, problem: str) -> None:
    with pytest.raises(CredentialsInvalid) as caught:
        parse_docker_config(raw, "Secret ns/regcred")
    assert problem in str(caught.value)
    assert str(caught.value).startswith("Secret ns/regcred")


def test_empty_entries_and_helper_only_configs_hold_no_credentials() -> None:
    assert parse_docker_config('{"auths": {"r.example.com": {}}}', "s") == {}
    assert parse_docker_config('{"credsStore": "desktop"}', "s") == {}
    # The legacy .dockercfg layout is the map itself.
    assert set(parse_docker_config(json.dumps({"r.example.com": {"auth": b64("a:b")}}), "s")) == {
        "r.example.com"
    }


def secret(kind: str, data: dict[str, str]) -> dict[str, object]:
    return {"type": kind, "data": data}


def test_pull_secrets_of_both_kubelet_types_are_read() -> None:
    body = b64(config({"r.example.com": {"auth": b64("a:b")}}))
    assert set(
        parse_pull_secret(secret("kubernetes.io/dockerconfigjson", {".dockerconfigjson": body}), "S")
    ) == {"r.example.com"}
    legacy = b64(json.dumps({"r.example.com": {"auth": b64("a:b")}}))
    assert set(parse_pull_secret(secret("kubernetes.io/dockercfg", {".dockercfg": legacy}), "S")) == {
        "r.example.com"
    }


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            secret("Opaque", {".dockerconfigjson": "e30="}),
            "is of type 'Opaque', not kubernetes.io/dockerconfigjson",
        ),
        (secret("kubernetes.io/dockerconfigjson", {}), "has no .dockerconfigjson key"),
        (secret("kubernetes.io/dockerconfigjson", {".dockerconfigjson": "%%"}), "is not base64"),
    ],
)
def test_a_pull_secret_of_the_wrong_shape_says_what_is_wrong(body: dict[str, object], problem: str) -> None:
    with pytest.raises(CredentialsInvalid, match=problem):
        parse_pull_secret(body, "Secret team-a/regcred")


def test_bearer_challenges_are_parsed_with_quoted_values() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/app:pull,push", error="invalid_token"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.example.com/token"
    assert challenge.params["service"] == "registry.example.com"
    assert challenge.params["scope"] == "repository:team/app:pull,push"  # a comma inside quotes
    assert challenge.params["error"] == "invalid_token"


def test_basic_and_odd_challenges() -> None:
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None
    assert basic.scheme == "basic"
    assert basic.realm == "Registry Realm"
    escaped = parse_challenge(r'Bearer realm="https://a/t\"x\"",service=plain')
    assert escaped is not None
    assert escaped.realm == 'https://a/t"x"'
    assert escaped.params["service"] == "plain"
    assert parse_challenge("") is None
    assert parse_challenge("realm=x") is None


def test_the_scope_asks_to_pull_one_repository_only() -> None:
    assert pull_scope("team-a/trainer") == "repository:team-a/trainer:pull"


def test_token_answers() -> None:
    assert parse_token_response(b'{"token": "t1", "expires_in": 300}').expires_in == 300
    assert parse_token_response(b'{"access_token": "t2"}').value == "t2"
    assert parse_token_response(b'{"token": "t3"}').expires_in == 60  # the spec's default
    with pytest.raises(CredentialsInvalid):
        parse_token_response(b'{"token": ""}')
    with pytest.raises(CredentialsInvalid):
        parse_token_response(b"<html>")
    assert ANONYMOUS == "anonymous"


def tenant(pull_secret: str | None) -> Tenant:
    spec: dict[str, object] = {"namespaces": ["team-a"], "quota": {"nominalGPUs": 1}}
    if pull_secret:
        spec["imagePullSecret"] = {"name": pull_secret}
    return Tenant.model_validate({"metadata": {"name": "team-a"}, "spec": spec})


def test_the_fix_for_refused_credentials_names_the_secret_and_how_to_update_it() -> None:
    error = image_error(
        "spec.image",
        "reg.example.com:5000/team/app:v1",
        tenant("regcred"),
        "RegistryAuthFailed",
        "registry reg.example.com:5000 refused the credentials in Secret team-a/regcred (401)",
    )
    assert "update the .dockerconfigjson of Secret regcred" in error.fix
    assert "kubectl create secret docker-registry regcred --docker-server=reg.example.com:5000" in error.fix
    missing = image_error("spec.image", "reg.example.com/app:v1", tenant("regcred"), "PullSecretMissing", "m")
    assert "create the image pull Secret regcred in this namespace" in missing.fix
    none = image_error("spec.image", "reg.example.com/app:v1", tenant(None), "RegistryAuthFailed", "m")
    assert "spec.imagePullSecret" in none.fix
    assert "team-a" in none.fix


def test_the_tenant_model_reads_the_pull_secret() -> None:
    assert tenant("regcred").spec.image_pull_secret is not None
    assert tenant(None).to_api()["spec"] == {
        "namespaces": ["team-a"],
        "quota": {"nominalGPUs": 1, "borrowingLimitGPUs": 0, "flavor": "gpu"},
        "members": {"users": [], "groups": []},
        "admins": {"users": [], "groups": []},
        "trustedSigners": [],
        "sharedStorage": [],
    }


def test_pods_pull_with_the_tenants_secret_and_only_then() -> None:
    from tests.unit.manifests import SETTINGS, load
    from trainguard.api.models import TrainingJob
    from trainguard.workload.builders import build_pod

    job = TrainingJob.model_validate(
        load("examples/trainingjob-llm.yaml", uid="11111111-2222-3333-4444-555555555555", generation=1)
    )
    raw = load("examples/tenant-team-a.yaml", uid="tenant-uid")
    anonymous = Tenant.model_validate(raw)
    private = Tenant.model_validate({**raw, "spec": {**raw["spec"], "imagePullSecret": {"name": "regcred"}}})
    assert "imagePullSecrets" not in build_pod(job, anonymous, 0, 0, SETTINGS)["spec"]
    assert build_pod(job, private, 0, 0, SETTINGS)["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
