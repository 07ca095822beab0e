"""What to tell a user whose image did not verify: the field, the reason, and the fix. Pure."""

from __future__ import annotations

import re

from trainguard.api.images import InvalidReference, parse
from trainguard.api.models import Tenant
from trainguard.policy.errors import FieldError

# Reasons whose fix is to sign the image with a key the tenant trusts.
SIGNATURE_REASONS = ("Unsigned", "UntrustedSigner", "InvalidSignature")
# Reasons whose fix is in the tenant's image pull Secret (or the lack of one).
PULL_SECRET_REASONS = ("RegistryAuthFailed", "PullSecretMissing", "PullSecretInvalid")


def _pull_secret_fix(image: str, tenant: Tenant, reason: str) -> str:
    """How to give trainguard (and the job's pods) registry credentials that work."""
    try:
        ref = parse(image)
        registry, target = ref.registry, ref.name
    except InvalidReference:
        registry, target = "<registry>", image
    secret = tenant.spec.image_pull_secret
    if secret is None:
        return (
            f"ask the platform team to name an image pull Secret in tenant {tenant.metadata.name!r} "
            f"(spec.imagePullSecret) holding credentials for {registry} that can pull {target}, "
            "then apply again"
        )
    create = (
        f"`kubectl create secret docker-registry {secret.name} --docker-server={registry} "
        "--docker-username=<user> --docker-password=<password or token> -n <namespace> "
        "--dry-run=client -o yaml | kubectl apply -f -`"
    )
    if reason == "PullSecretMissing":
        what = f"create the image pull Secret {secret.name} in this namespace"
    elif reason == "PullSecretInvalid":
        what = f"replace Secret {secret.name} with a kubernetes.io/dockerconfigjson Secret (`auths` entries)"
    else:
        what = f"update the .dockerconfigjson of Secret {secret.name} with credentials that can pull {target}"
    return f"{what} (the platform team, who may write Secrets), e.g. {create}, then apply again"


def image_error(path: str, image: str, tenant: Tenant, reason: str, message: str) -> FieldError:
    """The refusal of `image` at `path` for `reason` (a verification failure's code)."""
    if reason in SIGNATURE_REASONS:
        trusted = ", ".join(s.name for s in tenant.spec.trusted_signers) or "none"
        try:
            target = parse(image).name
        except InvalidReference:
            target = image
        fix = (
            f"sign the image with a key tenant {tenant.metadata.name!r} trusts (trusted signers: {trusted}), "
            f"e.g. `cosign sign --key <that key> {target}@<digest>`, then apply again"
        )
    elif reason in PULL_SECRET_REASONS:
        fix = _pull_secret_fix(image, tenant, reason)
    elif reason == "PullSecretUnreadable":
        fix = (
            "ask the platform team: the operator needs `get` on Secrets (the chart's RBAC, "
            "registryAuth.pullSecretNames) to read the tenant's pull Secret"
        )
    elif reason == "RegistryCredentialsUnreadable":
        fix = "ask the platform team to fix the operator's registry credentials file (--registry-auth-file)"
    elif reason == "TagDigestMismatch":
        fix = "name the image by tag or by digest alone, or point the tag at the digest you mean"
    elif reason == "CannotVerify":
        fix = "trainguard fails closed when the registry cannot be read; check the registry and apply again"
    elif reason == "NoTrustedSigners":
        fix = "ask the platform team to add trusted signers to the tenant"
    else:
        fix = "write the full reference, e.g. registry.example.com/team/trainer:v1"
    return FieldError(path, reason, message, fix)


# What the mutating webhook tells a server-side dry run (`kubectl apply --dry-run=server`,
# `kubectl trainguard verify-image`) about an image that verified: an admission warning, since a
# dry run stores nothing the signer could be read back from. One home for its wording and parsing.
_VERIFIED = re.compile(r"^image verified: signed by (\S+), a signer tenant (\S+) trusts; pinned to (\S+)$")


def verified_warning(tenant: str, signer: str, pinned: str) -> str:
    return f"image verified: signed by {signer}, a signer tenant {tenant} trusts; pinned to {pinned}"


def parse_verified_warning(text: str) -> tuple[str, str, str] | None:
    """(tenant, signer, pinned reference) from `verified_warning`'s text; None for any other text."""
    found = _VERIFIED.match(text.strip())
    return (found.group(2), found.group(1), found.group(3)) if found else None
