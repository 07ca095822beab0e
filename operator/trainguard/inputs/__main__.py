"""`python -m trainguard.inputs` (also `trainguard inputs`): make and verify signed manifests of
shared folders. See docs/researchers.md, "Verified shared inputs"."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainguard.api.constants import INPUT_SIGNERS_ENV
from trainguard.inputs.scan import read_manifest, scan
from trainguard.integrity.inputs import (
    MANIFEST_FILE,
    SIGN_COMMAND,
    SIGNATURE_FILE,
    ManifestInvalid,
    differences,
    parse,
    render,
    signers_from_json,
    verify_signature,
)
from trainguard.integrity.keys import Signer

VIOLATION = "SharedInputChanged"  # the reason a job that fails this check is given
TERMINATION_MESSAGE_LIMIT = 4096  # what the kubelet keeps of a termination message


def verify(root: Path, signers: list[Signer]) -> list[str]:
    """Every reason the folder is not exactly what a trusted signer signed; empty when it is."""
    try:
        manifest, signature = read_manifest(root)
        verify_signature(manifest, signature, signers)
        expected = parse(manifest)
    except (ManifestInvalid, OSError) as exc:
        return [f"{root}: {exc}"]
    actual, refused = scan(root)
    checked = {name: entry for name, entry in expected.items() if name not in refused}
    problems = [*differences(checked, actual), *(f"{name}: {why}" for name, why in sorted(refused.items()))]
    return [f"{root}/{p}" for p in problems]


def _signers(args: argparse.Namespace) -> list[Signer]:
    signers = [Signer.from_pem(Path(k).stem, Path(k).read_text()) for k in args.key]
    if args.signers_env and os.environ.get(args.signers_env):
        signers += signers_from_json(os.environ[args.signers_env])
    return signers


def _report(problems: list[str], termination_log: Path | None) -> None:
    message = f"{VIOLATION}: shared input files differ from their signed manifest:\n" + "\n".join(
        f"* {p}" for p in problems
    )
    message += (
        "\nIf the change is intended, make and sign the folder's manifest again "
        f"(`trainguard inputs manifest <folder>`, then `{SIGN_COMMAND}`); otherwise restore the files."
    )
    print(message, file=sys.stderr)
    if termination_log is not None:
        # The pod's status shows this (kubectl describe): first lines first, cut at the kubelet's limit.
        data = message.encode()[:TERMINATION_MESSAGE_LIMIT]
        try:
            termination_log.write_bytes(data)
        except OSError as exc:
            print(f"could not write {termination_log}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainguard inputs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("manifest", help="write a folder's manifest, for a trusted signer to sign")
    make.add_argument("folder", type=Path)
    make.add_argument(
        "-o", "--output", help=f"where to write it (default <folder>/{MANIFEST_FILE}; - for stdout)"
    )
    check = sub.add_parser("verify", help="check folders against their signed manifests")
    check.add_argument("folders", type=Path, nargs="+")
    check.add_argument("--key", action="append", default=[], help="a trusted cosign public key (PEM file)")
    check.add_argument(
        "--signers-env", default=INPUT_SIGNERS_ENV, help="variable holding trusted signers (JSON)"
    )
    check.add_argument("--termination-log", type=Path, help="also write the refusal there (Kubernetes)")
    args = parser.parse_args(argv)

    if args.command == "manifest":
        files, refused = scan(args.folder)
        if refused:
            lines = [f"* {name}: {why}" for name, why in sorted(refused.items())]
            print("cannot make a manifest:\n" + "\n".join(lines), file=sys.stderr)
            return 1
        data = render(files)
        if args.output == "-":
            sys.stdout.buffer.write(data)
            return 0
        out = Path(args.output) if args.output else args.folder / MANIFEST_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        print(f"{out}: {len(files)} files; sign it in {args.folder} with: {SIGN_COMMAND}", file=sys.stderr)
        return 0

    signers = _signers(args)
    if not signers:
        parser.error(f"no trusted signer: give --key <public key file> or set {args.signers_env}")
    problems = [p for folder in args.folders for p in verify(folder, signers)]
    if problems:
        _report(problems, args.termination_log)
        return 1
    print(f"verified: {', '.join(str(f) for f in args.folders)} ({SIGNATURE_FILE} matches)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
