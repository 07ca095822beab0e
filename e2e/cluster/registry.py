"""A real OCI registry on loopback, images pushed with crane and signed with the real cosign."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from e2e.cluster.localcluster import REGISTRY_ENV, REGISTRY_QUIET, bin_dir
from e2e.cluster.waiting import die_with_parent, port_listening, wait_for

LOOPBACK = "127.0.0.1"


def _run(*argv: str, cwd: Path | None = None, docker_config: Path | None = None) -> str:
    env = {**os.environ, "COSIGN_PASSWORD": "", "COSIGN_YES": "true"}
    if docker_config is not None:  # crane and cosign read registry credentials from $DOCKER_CONFIG
        env["DOCKER_CONFIG"] = str(docker_config)
    result = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr}")
    return result.stdout.strip()


@dataclass
class Registry:
    """`crane registry serve`: an in-memory OCI registry without the referrers API, so cosign
    and trainguard both use the OCI 1.1 tag fallback for referrers."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    docker_config: Path | None = None  # a folder with config.json: credentials crane and cosign push with

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Registry:
        log = (self.workdir / f"registry-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [str(bin_dir() / "crane"), "registry", "serve", "--address", self.host],
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent,
        )
        wait_for("the registry to listen", lambda: port_listening(LOOPBACK, self.port))
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def push(self, repository: str, tag: str, content: str) -> str:
        """Push a one-layer image whose layer holds `content`; return its digest."""
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "content.txt"
            data.write_text(content)
            layer = Path(tmp) / "layer.tar"
            with tarfile.open(layer, "w") as tar:
                tar.add(data, arcname="content.txt")
            _run(
                str(bin_dir() / "crane"), "append", "-f", str(layer), "-t", f"{self.host}/{repository}:{tag}",
                docker_config=self.docker_config,
            )  # fmt: skip
        return _run(
            str(bin_dir() / "crane"),
            "digest",
            f"{self.host}/{repository}:{tag}",
            docker_config=self.docker_config,
        )

    def crane(self, *args: str) -> str:
        return _run(str(bin_dir() / "crane"), *args, docker_config=self.docker_config)


def docker_config_json(auths: dict[str, tuple[str, str]]) -> str:
    """A docker config JSON (`~/.docker/config.json`, a pull Secret's `.dockerconfigjson`)."""
    entries = {
        host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()} for host, (u, p) in auths.items()
    }
    return json.dumps({"auths": entries})


@dataclass
class AuthRegistry(Registry):
    """The distribution registry (`registry serve`, the local cluster's own) with htpasswd Basic
    authentication on loopback: `users` may push and pull, nobody else may do either. Pushes and
    signatures go in with the first user's credentials."""

    users: dict[str, str] = field(default_factory=dict)

    def start(self) -> AuthRegistry:
        import bcrypt  # a dev dependency: htpasswd entries must be bcrypt

        state = self.workdir / f"auth-registry-{self.port}"
        state.mkdir(parents=True, exist_ok=True)
        htpasswd = state / "htpasswd"
        htpasswd.write_text(
            "".join(
                f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                for u, p in self.users.items()
            )
        )
        config = state / "registry.yml"
        config.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    **REGISTRY_QUIET,
                    "storage": {"filesystem": {"rootdirectory": str(state / "data")}},
                    "http": {"addr": self.host, "debug": {"addr": ""}},
                    "auth": {"htpasswd": {"realm": "trainguard-test", "path": str(htpasswd)}},
                }
            )
        )
        user, password = next(iter(self.users.items()))
        self.docker_config = state / "docker"
        self.docker_config.mkdir(exist_ok=True)
        (self.docker_config / "config.json").write_text(docker_config_json({self.host: (user, password)}))
        log = (state / "registry.log").open("ab")
        self.proc = subprocess.Popen(
            [str(bin_dir() / "registry"), "serve", str(config)],
            env={**os.environ, **REGISTRY_ENV},
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent,
        )
        wait_for("the authenticated registry to listen", lambda: port_listening(LOOPBACK, self.port))
        return self


@dataclass(frozen=True)
class CosignKey:
    private: Path
    public: Path

    @classmethod
    def generate(cls, folder: Path, name: str) -> CosignKey:
        folder.mkdir(parents=True, exist_ok=True)
        _run(str(bin_dir() / "cosign"), "generate-key-pair", "--output-key-prefix", name, cwd=folder)
        return cls(folder / f"{name}.key", folder / f"{name}.pub")

    def sign(self, reference: str, layout: str, docker_config: Path | None = None) -> None:
        """Sign in one of cosign's two layouts: "classic" or "bundle" (with the registry
        credentials in `docker_config`, a folder holding config.json, when given)."""
        {"classic": self.sign_classic, "bundle": self.sign_bundle}[layout](reference, docker_config)

    def sign_classic(self, reference: str, docker_config: Path | None = None) -> None:
        """The classic layout: a `sha256-<hex>.sig` simple-signing manifest, no transparency log."""
        _run(
            str(bin_dir() / "cosign"), "sign", "--key", str(self.private), "--tlog-upload=false",
            "--new-bundle-format=false", "--use-signing-config=false", "--allow-http-registry", reference,
            docker_config=docker_config,
        )  # fmt: skip

    def sign_bundle(self, reference: str, docker_config: Path | None = None) -> None:
        """The Sigstore bundle layout attached as an OCI referrer, with a signing config that names
        no transparency log and an empty trusted root, so cosign contacts nothing but the registry."""
        with tempfile.TemporaryDirectory() as tmp:
            config, root = Path(tmp) / "signing-config.json", Path(tmp) / "trusted-root.json"
            _run(str(bin_dir() / "cosign"), "signing-config", "create", "--out", str(config))
            root.write_text('{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}')
            cosign = [str(bin_dir() / "cosign"), "sign", "--key", str(self.private)]
            _run(
                *cosign,
                "--signing-config",
                str(config),
                "--trusted-root",
                str(root),
                "--allow-http-registry",
                reference,
                docker_config=docker_config,
            )
