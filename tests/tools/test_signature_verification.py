"""Image verification against a real registry on loopback, with signatures made by the real cosign."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster.registry import CosignKey, Registry
from e2e.cluster.waiting import free_port
from trainguard.signing.auth import Credential, Keychain
from trainguard.signing.cosign import Signer
from trainguard.signing.registry import Fetched, RegistryClient
from trainguard.signing.verifier import ResultCache, TagCache, VerificationFailed, Verifier


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(free_port(), tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CosignKey]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: CosignKey.generate(folder / name, name) for name in ("release", "stranger")}


def signer(key: CosignKey, name: str = "release") -> Signer:
    return Signer.from_pem(name, key.public.read_text())


def verifier(registry: Registry) -> Verifier:
    return Verifier(RegistryClient(plain_http=frozenset({registry.host}), timeout=1.0))


def failure(registry: Registry, image: str, signers: list[Signer]) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as caught:
        verifier(registry).verify(image, signers)
    return caught.value


@pytest.mark.parametrize("layout", ["classic", "bundle"])
def test_an_image_signed_by_a_trusted_key_is_pinned_to_its_digest(
    registry: Registry, keys: dict[str, CosignKey], layout: str
) -> None:
    digest = registry.push(f"team/{layout}", "v1", f"trainer {layout}")
    key = keys["release"]
    key.sign(f"{registry.host}/team/{layout}@{digest}", layout)
    verified = verifier(registry).verify(f"{registry.host}/team/{layout}:v1", [signer(key)])
    assert verified.digest == digest
    assert verified.signer == "release"
    assert verified.pinned == f"{registry.host}/team/{layout}:v1@{digest}"


def test_unsigned_image_is_refused(registry: Registry, keys: dict[str, CosignKey]) -> None:
    digest = registry.push("team/unsigned", "v1", "nobody signed me")
    err = failure(registry, f"{registry.host}/team/unsigned:v1", [signer(keys["release"])])
    assert err.reason == "Unsigned"
    assert f"team/unsigned@{digest} has no cosign signature" in str(err)


@pytest.mark.parametrize("layout", ["classic", "bundle"])
def test_a_key_the_tenant_does_not_trust_is_refused(
    registry: Registry, keys: dict[str, CosignKey], layout: str
) -> None:
    digest = registry.push(f"team/stranger-{layout}", "v1", f"signed by a stranger {layout}")
    stranger = keys["stranger"]
    stranger.sign(f"{registry.host}/team/stranger-{layout}@{digest}", layout)
    err = failure(registry, f"{registry.host}/team/stranger-{layout}:v1", [signer(keys["release"])])
    assert err.reason == "UntrustedSigner"
    assert "signed by a key the tenant does not trust" in str(err)


def test_a_valid_signature_copied_onto_another_digest_is_refused(
    registry: Registry, keys: dict[str, CosignKey]
) -> None:
    good = registry.push("team/copy", "good", "the signed image")
    keys["release"].sign_classic(f"{registry.host}/team/copy@{good}")
    evil = registry.push("team/copy", "evil", "the image the saboteur wants to run")
    sig_of_good = f"{registry.host}/team/copy:{good.replace(':', '-')}.sig"
    registry.crane("copy", sig_of_good, f"{registry.host}/team/copy:{evil.replace(':', '-')}.sig")
    err = failure(registry, f"{registry.host}/team/copy:evil", [signer(keys["release"])])
    assert err.reason == "InvalidSignature"
    assert f"the signature is for {good}, not for this image ({evil})" in str(err)


def test_a_tag_moved_after_signing_resolves_to_the_new_unsigned_digest(
    registry: Registry, keys: dict[str, CosignKey]
) -> None:
    signed = registry.push("team/moved", "v1", "reviewed code")
    keys["release"].sign_classic(f"{registry.host}/team/moved@{signed}")
    moved = registry.push("team/moved", "v1", "code slipped in after review")
    err = failure(registry, f"{registry.host}/team/moved:v1", [signer(keys["release"])])
    assert err.reason == "Unsigned"
    assert moved in str(err)
    # Naming the signed digest with the moved tag is a contradiction, not a pass.
    mismatch = failure(registry, f"{registry.host}/team/moved:v1@{signed}", [signer(keys["release"])])
    assert mismatch.reason == "TagDigestMismatch"
    assert f"points to {moved}, not to the {signed}" in str(mismatch)


def test_malformed_and_oversized_signature_manifests_are_refused(
    registry: Registry, keys: dict[str, CosignKey], tmp_path: Path
) -> None:
    digest = registry.push("team/odd", "v1", "odd signatures")
    config = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "size": 2,
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    }
    oversized = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [],
        "annotations": {"padding": "x" * 300_000},
    }
    manifest = tmp_path / "big.json"
    manifest.write_text(json.dumps(oversized))
    request = urllib.request.Request(
        f"http://{registry.host}/v2/team/odd/manifests/{digest.replace(':', '-')}.sig",
        data=manifest.read_bytes(),
        method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    urllib.request.urlopen(request, timeout=5).close()  # noqa: S310 - the loopback test registry
    err = failure(registry, f"{registry.host}/team/odd:v1", [signer(keys["release"])])
    assert err.reason == "CannotVerify"
    assert "larger than 262144 bytes" in str(err)


def test_a_registry_that_is_down_gives_a_prompt_cannot_verify(keys: dict[str, CosignKey]) -> None:
    port = free_port()  # nothing listens here
    start = time.monotonic()
    with pytest.raises(VerificationFailed) as caught:
        Verifier(RegistryClient(plain_http=frozenset({f"127.0.0.1:{port}"}), timeout=1.0)).verify(
            f"127.0.0.1:{port}/team/x:v1", [signer(keys["release"])]
        )
    assert caught.value.reason == "CannotVerify"
    assert "cannot be reached" in str(caught.value)
    assert time.monotonic() - start < 3


def test_a_verified_digest_is_answered_from_the_cache(tmp_path: Path, keys: dict[str, CosignKey]) -> None:
    reg = Registry(free_port(), tmp_path).start()
    try:
        digest = reg.push("team/cached", "v1", "cache me")
        keys["release"].sign_classic(f"{reg.host}/team/cached@{digest}")
        v = verifier(reg)
        assert v.verify(f"{reg.host}/team/cached@{digest}", [signer(keys["release"])]).signer == "release"
    finally:
        reg.stop()
    # The registry is gone; the digest and the same trusted signers are still known good.
    assert v.verify(f"{reg.host}/team/cached@{digest}", [signer(keys["release"])]).signer == "release"
    # Other trusted signers are another question: the cache does not answer it.
    with pytest.raises(VerificationFailed, match="cannot be reached"):
        v.verify(f"{reg.host}/team/cached@{digest}", [signer(keys["stranger"], "stranger")])


class CountingClient(RegistryClient):
    """The real client, counting the manifests it asks the registry for, by reference."""

    def __init__(self, host: str) -> None:
        super().__init__(plain_http=frozenset({host}), timeout=1.0)
        self.asked: list[str] = []
        self.blobs: list[str] = []

    def manifest(
        self, registry: str, repository: str, reference: str, credential: Credential | None = None
    ) -> Fetched | None:
        self.asked.append(reference)
        return super().manifest(registry, repository, reference, credential)

    def blob(
        self, registry: str, repository: str, digest: str, credential: Credential | None = None
    ) -> bytes:
        self.asked.append(digest)
        self.blobs.append(digest)
        return super().blob(registry, repository, digest, credential)


def test_a_verdict_not_cached_reads_the_signatures_again_but_a_payload_once(
    registry: Registry, keys: dict[str, CosignKey]
) -> None:
    """With the verdict cache off, every verification reads the image's signature manifest (a
    signature can be added or removed at any time), but a payload blob, named by its digest, is
    fetched once per credential identity."""
    digest = registry.push("team/payload", "v1", "payload once")
    keys["release"].sign_classic(f"{registry.host}/team/payload@{digest}")
    client = CountingClient(registry.host)
    v = Verifier(client, ResultCache(ttl_seconds=0))
    image = f"{registry.host}/team/payload@{digest}"
    for _ in range(3):
        assert v.verify(image, [signer(keys["release"])]).cached is False
    signature_tag = digest.replace(":", "-") + ".sig"
    assert client.asked.count(signature_tag) == 3
    assert len(client.blobs) == 1
    # A wrong signer still fails with the payload from the cache: the check is redone each time.
    with pytest.raises(VerificationFailed) as caught:
        v.verify(image, [signer(keys["stranger"], "stranger")])
    assert caught.value.reason == "UntrustedSigner"
    # Another identity (here: anonymous vs. a credential) reads the blob itself.
    other = Keychain(operator={registry.host: Credential("operator file", username="u", password="p")})
    v.verify(image, [signer(keys["release"])], other)
    assert len(client.blobs) == 2


def test_one_admission_resolves_its_tag_once(registry: Registry, keys: dict[str, CosignKey]) -> None:
    """Admission pins `name:tag` to `name:tag@digest` (mutating webhook), then checks the final
    object (validating webhook): the second check finds the first one's resolution."""
    digest = registry.push("team/once", "v1", "resolve me once")
    keys["release"].sign_classic(f"{registry.host}/team/once@{digest}")
    client = CountingClient(registry.host)
    now = [0.0]
    v = Verifier(client, tags=TagCache(clock=lambda: now[0]))
    pinned = v.verify(f"{registry.host}/team/once:v1", [signer(keys["release"])]).pinned
    assert client.asked.count("v1") == 1
    assert v.verify(pinned, [signer(keys["release"])]).digest == digest
    assert client.asked.count("v1") == 1  # no second resolution, no second signature fetch
    assert len(client.asked) == 3  # the tag, the signature manifest and its payload (once: cached)
    # A burst of creates of the tag within its few seconds asks the registry nothing more...
    again = v.verify(f"{registry.host}/team/once:v1", [signer(keys["release"])])
    assert (again.digest, again.cached, len(client.asked)) == (digest, True, 3)
    # The event loop asks the caches first, without a thread: the same verdict, or None.
    remembered = v.from_memory(f"{registry.host}/team/once:v1", [signer(keys["release"])])
    assert remembered is not None
    assert (remembered.digest, remembered.signer, remembered.cached) == (digest, "release", True)
    assert v.from_memory(pinned, [signer(keys["release"])]) is not None
    assert v.from_memory(f"{registry.host}/team/once:v2", [signer(keys["release"])]) is None
    assert v.from_memory(f"{registry.host}/team/once:v1", [signer(keys["stranger"])]) is None
    assert len(client.asked) == 3
    # ...and after them the tag is resolved again: it may have moved.
    now[0] += TagCache.ttl_seconds + 0.1
    v.verify(f"{registry.host}/team/once:v1", [signer(keys["release"])])
    assert client.asked.count("v1") == 2
    # Once the tag moves and is resolved again, the old digest with the tag is a mismatch.
    moved = registry.push("team/once", "v1", "moved on")
    now[0] += TagCache.ttl_seconds + 0.1
    with pytest.raises(VerificationFailed):
        v.verify(f"{registry.host}/team/once:v1", [signer(keys["release"])])  # unsigned now
    with pytest.raises(VerificationFailed) as caught:
        v.verify(pinned, [signer(keys["release"])])
    assert caught.value.reason == "TagDigestMismatch"
    assert moved in str(caught.value)
