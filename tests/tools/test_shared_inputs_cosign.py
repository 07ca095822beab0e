"""Shared-folder manifests signed by the real `cosign sign-blob --key`, in both of its outputs,
then checked by `trainguard inputs verify` as a process, as the verify-inputs init container runs
it: exactly the commands docs/researchers.md gives."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from e2e.cluster.localcluster import bin_dir
from e2e.cluster.registry import CosignKey
from tests.unit.test_shared_inputs import run
from trainguard.integrity.inputs import MANIFEST_FILE, SIGNATURE_FILE


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CosignKey]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: CosignKey.generate(folder / name, name) for name in ("release", "stranger")}


def cosign(*args: str | Path, cwd: Path) -> None:
    env = {**os.environ, "COSIGN_PASSWORD": "", "COSIGN_YES": "true"}
    result = subprocess.run(
        [str(bin_dir() / "cosign"), *map(str, args)], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def inputs(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(*args, env=env, timeout=120)


def signed_folder(root: Path, key: CosignKey, layout: str) -> Path:
    (root / "tokenizer").mkdir(parents=True)
    (root / "tokenizer" / "vocab.json").write_text('{"a": 0, "b": 1}')
    (root / "train_utils.py").write_text("def lr(step):\n    return 1e-4\n")
    made = inputs("manifest", root)
    assert made.returncode == 0, made.stderr
    if layout == "signature":  # the documented command (docs/researchers.md)
        cosign(
            "sign-blob", "--key", key.private, "--tlog-upload=false", "--new-bundle-format=false",
            "--use-signing-config=false", "--output-signature", SIGNATURE_FILE, MANIFEST_FILE, cwd=root,
        )  # fmt: skip
    else:  # cosign 3's default output, a Sigstore bundle, here with no transparency log
        config, trusted_root = root.parent / "signing-config.json", root.parent / "trusted-root.json"
        cosign("signing-config", "create", "--out", config, cwd=root)
        trusted_root.write_text('{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}')
        cosign(
            "sign-blob", "--key", key.private, "--signing-config", config, "--trusted-root", trusted_root,
            "--bundle", SIGNATURE_FILE, MANIFEST_FILE, cwd=root,
        )  # fmt: skip
    return root


@pytest.mark.parametrize("layout", ["signature", "bundle"])
def test_a_folder_signed_with_cosign_verifies_and_an_edit_is_named(
    tmp_path: Path, keys: dict[str, CosignKey], layout: str
) -> None:
    root = signed_folder(tmp_path / "shared-code", keys["release"], layout)
    trusted, stranger = keys["release"].public, keys["stranger"].public
    ok = inputs("verify", root, "--key", trusted, env={"TRAINGUARD_INPUT_SIGNERS": ""})
    assert ok.returncode == 0, ok.stderr
    untrusted = inputs("verify", root, "--key", stranger, env={"TRAINGUARD_INPUT_SIGNERS": ""})
    assert untrusted.returncode == 1
    assert "by a signer the tenant trusts (trusted: stranger)" in untrusted.stderr

    (root / "train_utils.py").write_text("def lr(step):\n    return 1e4\n")
    log = tmp_path / "termination-log"
    changed = inputs(
        "verify", root, "--key", trusted, "--termination-log", log, env={"TRAINGUARD_INPUT_SIGNERS": ""}
    )
    assert changed.returncode == 1
    assert log.read_text().startswith("SharedInputChanged: ")
    assert f"{root}/train_utils.py: changed" in log.read_text()
