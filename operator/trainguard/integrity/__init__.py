"""Weight integrity: the keyed fingerprint (CPU reference), later the sidecar and trainer hook."""
