"""What to tell a user whose image did not verify: the field, the reason, and the fix. Pure."""

from __future__ import annotations

from trainguard.api.images import InvalidReference, parse
from trainguard.api.models import Tenant
from trainguard.policy.errors import FieldError

# Reasons whose fix is to sign the image with a key the tenant trusts.
SIGNATURE_REASONS = ("Unsigned", "UntrustedSigner", "InvalidSignature")


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
    elif reason == "TagDigestMismatch":
        fix = "name the image by tag or by digest alone, or point the tag at the digest you mean"
    elif reason == "CannotVerify":
        fix = "trainguard fails closed when the registry cannot be read; check the registry and apply again"
    elif reason == "NoTrustedSigners":
        fix = "ask the platform team to add trusted signers to the tenant"
    else:
        fix = "write the full reference, e.g. registry.example.com/team/trainer:v1"
    return FieldError(path, reason, message, fix)
