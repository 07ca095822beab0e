"""Starting is idempotent and `down` leaves no process and no listening port behind.

Uses a second, one-node cluster in its own state folder and port range, so the session's
cluster keeps serving the other tests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from e2e.cluster.localcluster import (
    COMPONENTS,
    Cluster,
    ClusterConfig,
    LocalCluster,
    _pid_alive,
    _port_open,
    _read_pids,
)


def test_up_is_idempotent_and_down_leaves_nothing(cluster: Cluster, tmp_path: Path) -> None:
    lc = LocalCluster(ClusterConfig(nodes=1, gpus_per_node=2, port_base=27380), state=tmp_path / "second")
    try:
        first = lc.up()
        pids = _read_pids(lc.state)
        assert set(pids) == set(COMPONENTS)
        nodes = first.kubectl("get", "nodes", "-o", "name").stdout.split()
        assert nodes == ["node/gpu-node-0"]

        again = time.monotonic()
        lc.up()
        assert time.monotonic() - again < 5, "a second `up` must reuse the running cluster"
        assert _read_pids(lc.state) == pids
    finally:
        lc.down()
    for name, pid in pids.items():
        assert not _pid_alive(pid, name), f"{name} (pid {pid}) still runs after down"
        assert (
            not os.path.exists(f"/proc/{pid}/status") or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert [p for p in lc.ports.all() if _port_open(p)] == []
