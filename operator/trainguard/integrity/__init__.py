"""Weight integrity, the pure core: the keyed fingerprint (CPU reference), the trainer <-> sidecar
messages, signed reports and checkpoint manifests, replica comparison. No sockets, no PyTorch,
no cluster: the deployables around it are `trainguard.sidecar`, `trainguard.trainer` (with
`trainguard.gpu` and `trainguard.channel`) and the operator's `handlers.integrity`."""
