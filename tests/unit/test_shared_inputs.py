"""Signed manifests of shared inputs: the pure rules, and `python -m trainguard.inputs` run as a
process against folders on disk, the way the verify-inputs init container runs it (signatures
made here with the same algorithm as `cosign sign-blob --key`; tests/tools signs with cosign)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.unit.manifests import ROOT
from trainguard.api.constants import INPUT_SIGNERS_ENV
from trainguard.api.models import Tenant
from trainguard.integrity import inputs as m
from trainguard.integrity.keys import Signer
from trainguard.trainer.inputs import SharedInputChanged, read_verified
from trainguard.workload import builders


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign(key: ec.EllipticCurvePrivateKey, data: bytes, bundle: bool = False) -> bytes:
    """What `cosign sign-blob --key` writes: base64 of the DER signature, or a Sigstore bundle."""
    signature = base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()
    if not bundle:
        return signature.encode()
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return json.dumps(
        {
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"publicKey": {"hint": "x"}},
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": digest},
                "signature": signature,
            },
        }
    ).encode()


def run(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m trainguard.inputs ARGS`, as the verify-inputs init container runs it."""
    return subprocess.run(
        [sys.executable, "-m", "trainguard.inputs", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}{os.pathsep}{ROOT}", **(env or {})},
    )  # fmt: skip


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return new_key()


@pytest.fixture
def folder(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    """A shared-code folder with its manifest made by the command and signed by `key`."""
    root = tmp_path / "shared-code"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "model.py").write_text("def forward(x):\n    return x\n")
    (root / "pkg" / "sub" / "tokenizer.json").write_text('{"vocab": 3}')
    (root / "base.pt").write_bytes(bytes(range(256)) * 64)
    made = run("manifest", root)
    assert made.returncode == 0, made.stderr
    assert "cosign sign-blob" in made.stderr  # it says how to sign
    manifest = (root / m.MANIFEST_FILE).read_bytes()
    (root / m.SIGNATURE_FILE).write_bytes(sign(key, manifest))
    return root


def signers_env(*keys: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The trusted keys as the pod builder hands them to the verifier (a tenant's signers)."""
    signers = [{"name": f"k{i}", "publicKey": public_pem(k)} for i, k in enumerate(keys)]
    spec = {"namespaces": ["team-a"], "quota": {"nominalGPUs": 1}, "trustedSigners": signers}
    tenant = Tenant.model_validate({"metadata": {"name": "team-a"}, "spec": spec})
    return {INPUT_SIGNERS_ENV: builders.input_signers(tenant)}


# --------------------------------------------------------------------------- the pure rules


def test_the_manifest_is_canonical_sorted_and_leaves_out_its_own_folder() -> None:
    files = {
        "b/x": m.FileEntry("11" * 32, 3),
        "a": m.FileEntry("22" * 32, 1),
        ".trainguard/manifest.json": m.FileEntry("33" * 32, 9),
    }
    data = m.render(files)
    assert data == m.render(dict(reversed(list(files.items()))))
    doc = json.loads(data)
    assert [f["path"] for f in doc["files"]] == ["a", "b/x"]
    assert m.parse(data) == {k: v for k, v in files.items() if not k.startswith(".trainguard")}


@pytest.mark.parametrize("name", ["/etc/passwd", "../up", "a/../../b", "a//b", ".trainguard/manifest.json"])
def test_a_manifest_naming_a_path_outside_the_folder_is_refused(name: str) -> None:
    doc = {"format": m.FORMAT, "files": [{"path": name, "sha256": "00" * 32, "size": 1}]}
    with pytest.raises(m.ManifestInvalid):
        m.parse(json.dumps(doc).encode())


def test_differences_name_each_changed_missing_and_added_file() -> None:
    signed = {
        "same": m.FileEntry("aa" * 32, 1),
        "edited": m.FileEntry("bb" * 32, 2),
        "gone": m.FileEntry("cc" * 32, 3),
    }
    now = {"same": signed["same"], "edited": m.FileEntry("dd" * 32, 2), "new.py": m.FileEntry("ee" * 32, 4)}
    problems = m.differences(signed, now)
    assert [p.split(":")[0] for p in problems] == ["edited", "gone", "new.py"]
    assert "changed" in problems[0]
    assert "missing" in problems[1]
    assert "added" in problems[2]
    assert m.differences(signed, signed) == []


@pytest.mark.parametrize("bundle", [False, True])
def test_a_signature_verifies_only_for_a_trusted_key_and_these_bytes(
    bundle: bool, key: ec.EllipticCurvePrivateKey
) -> None:
    data = m.render({"a": m.FileEntry("aa" * 32, 1)})
    trusted = Signer.from_pem("release", public_pem(key))
    stranger = Signer.from_pem("stranger", public_pem(new_key()))
    assert m.verify_signature(data, sign(key, data, bundle), [stranger, trusted]) == trusted
    with pytest.raises(m.ManifestInvalid, match="trusted: stranger"):
        m.verify_signature(data, sign(key, data, bundle), [stranger])
    other = m.render({"a": m.FileEntry("bb" * 32, 1)})
    with pytest.raises(m.ManifestInvalid):
        m.verify_signature(other, sign(key, data, bundle), [trusted])
    with pytest.raises(m.ManifestInvalid, match="base64"):
        m.verify_signature(data, b"not a signature!", [trusted])


# --------------------------------------------------------------------------- the command, as a process


def test_an_untouched_folder_verifies(folder: Path, key: ec.EllipticCurvePrivateKey) -> None:
    result = run("verify", folder, env=signers_env(new_key(), key))
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stderr


def test_an_edited_shared_file_is_refused_naming_it(
    folder: Path, key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    # The first move of the incident: someone with write access edits shared code.
    (folder / "pkg" / "model.py").write_text("def forward(x):\n    return x * 0\n")
    log = tmp_path / "termination-log"
    result = run("verify", folder, "--termination-log", log, env=signers_env(key))
    assert result.returncode == 1
    message = log.read_text()
    assert message.startswith("SharedInputChanged: ")
    assert f"{folder}/pkg/model.py: changed" in message
    assert "base.pt" not in message  # only what differs is named
    assert message in result.stderr


def test_added_removed_and_linked_files_are_each_named(folder: Path, key: ec.EllipticCurvePrivateKey) -> None:
    (folder / "pkg" / "sub" / "tokenizer.json").unlink()
    (folder / "pkg" / "sitecustomize.py").write_text("import os\n")
    (folder / "pkg" / "link.py").symlink_to(folder / "pkg" / "model.py")
    result = run("verify", folder, env=signers_env(key))
    assert result.returncode == 1
    assert f"{folder}/pkg/sub/tokenizer.json: missing" in result.stderr
    assert f"{folder}/pkg/sitecustomize.py: added" in result.stderr
    assert f"{folder}/pkg/link.py: a symbolic link" in result.stderr


def test_a_manifest_rewritten_to_match_the_edit_is_refused_for_its_signature(
    folder: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    (folder / "base.pt").write_bytes(b"poisoned")
    assert run("manifest", folder).returncode == 0  # the attacker regenerates the manifest, cannot sign it
    result = run("verify", folder, env=signers_env(key))
    assert result.returncode == 1
    assert "is not a signature of .trainguard/manifest.json by a signer the tenant trusts" in result.stderr
    (folder / m.SIGNATURE_FILE).write_bytes(sign(new_key(), (folder / m.MANIFEST_FILE).read_bytes()))
    assert run("verify", folder, env=signers_env(key)).returncode == 1  # an untrusted key's signature


def test_a_folder_without_a_manifest_is_refused_with_the_fix(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    (tmp_path / "data").mkdir()
    result = run("verify", tmp_path / "data", env=signers_env(key))
    assert result.returncode == 1
    assert "manifest.json is missing" in result.stderr
    assert "trainguard inputs manifest" in result.stderr


def test_keys_can_be_given_as_files(folder: Path, key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    pub = tmp_path / "release.pub"
    pub.write_text(public_pem(key))
    assert run("verify", folder, "--key", pub, env={"TRAINGUARD_INPUT_SIGNERS": ""}).returncode == 0
    none = run("verify", folder, env={"TRAINGUARD_INPUT_SIGNERS": ""})
    assert none.returncode == 2
    assert "no trusted signer" in none.stderr


def test_the_operator_entry_point_runs_the_same_command(
    folder: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    from trainguard.cli.main import main

    os.environ["TRAINGUARD_INPUT_SIGNERS_TEST"] = signers_env(key)["TRAINGUARD_INPUT_SIGNERS"]
    try:
        assert main(["inputs", "verify", str(folder), "--signers-env", "TRAINGUARD_INPUT_SIGNERS_TEST"]) == 0
        (folder / "base.pt").write_bytes(b"x")
        assert main(["inputs", "verify", str(folder), "--signers-env", "TRAINGUARD_INPUT_SIGNERS_TEST"]) == 1
    finally:
        del os.environ["TRAINGUARD_INPUT_SIGNERS_TEST"]


# --------------------------------------------------------------------------- the trainer library


def trainer_env(folder: Path, key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    return {**signers_env(key), "TRAINGUARD_VERIFIED_INPUTS": json.dumps([str(folder)])}


def test_the_trainer_reads_a_signed_checkpoint_and_refuses_a_changed_one(
    folder: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    env = trainer_env(folder, key)
    assert read_verified(folder / "base.pt", env) == bytes(range(256)) * 64
    (folder / "base.pt").write_bytes(b"swapped after the init container checked")
    with pytest.raises(SharedInputChanged, match=r"base\.pt: changed"):
        read_verified(folder / "base.pt", env)


def test_the_trainer_refuses_a_file_outside_a_verified_folder_or_unlisted(
    folder: Path, key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    env = trainer_env(folder, key)
    (tmp_path / "elsewhere.pt").write_bytes(b"x")
    with pytest.raises(SharedInputChanged, match="not under a verified shared folder"):
        read_verified(tmp_path / "elsewhere.pt", env)
    (folder / "late.pt").write_bytes(b"x")
    with pytest.raises(SharedInputChanged, match="not in the manifest"):
        read_verified(folder / "late.pt", env)
    with pytest.raises(SharedInputChanged, match="cannot trust its manifest"):
        read_verified(folder / "base.pt", trainer_env(folder, new_key()))


def test_an_unreadable_file_is_named_not_skipped(
    folder: Path, key: ec.EllipticCurvePrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainguard.inputs import scan
    from trainguard.inputs.__main__ import verify

    real = scan.hash_file

    def unreadable(path: Path) -> m.FileEntry:
        if path.name == "model.py":  # as a file the verifier's user may not read (tests may run as root)
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(scan, "hash_file", unreadable)
    signer = Signer.from_pem("release", public_pem(key))
    assert verify(folder, [signer]) == [
        f"{folder}/pkg/model.py: cannot be read (Permission denied), so it cannot be checked"
    ]
