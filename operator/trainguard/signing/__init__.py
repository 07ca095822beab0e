"""Image signatures: OCI distribution client, cosign verification (both layouts), result cache."""
