"""Shared inputs, checked where they are mounted: `python -m trainguard.inputs` makes a folder's
manifest (for a researcher to sign) and verifies folders against their signed manifests (the
init container that runs before the trainer). The rules are `trainguard.integrity.inputs`'s;
this package only reads the filesystem."""
