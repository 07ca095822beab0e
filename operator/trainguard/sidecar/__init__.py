"""The integrity sidecar deployable: its own process and container, the only holder of the job's
key (`python -m trainguard.sidecar`, see `server`)."""
