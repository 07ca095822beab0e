"""A dynamic volume provisioner for the simulated cluster.

kwok nodes mount nothing, but kube-scheduler still requires every PersistentVolumeClaim of a
pod to be bound. This process plays the storage driver: for each pending claim of the
`standard` StorageClass it creates a PersistentVolume pre-bound to the claim, and it deletes
released volumes, watching claims and volumes as a real driver's informers do. It runs
beside the control plane, started and stopped by the launcher.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

PROVISIONER = "simulated.trainguard.dev"
STORAGE_CLASS = "standard"


def ensure_storage_class(storage: client.StorageV1Api) -> None:
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
    }
    driver = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": PROVISIONER},
        "spec": {"attachRequired": False, "podInfoOnMount": False},
    }
    for create, obj in ((storage.create_storage_class, body), (storage.create_csi_driver, driver)):
        try:
            create(obj)
        except ApiException as exc:
            if exc.status != 409:
                raise


def volume_for(pvc: dict[str, Any]) -> dict[str, Any] | None:
    """The PersistentVolume to create for `pvc`: a pending claim of our class, not yet bound."""
    spec, meta = pvc.get("spec") or {}, pvc["metadata"]
    if (
        (pvc.get("status") or {}).get("phase") != "Pending"
        or spec.get("volumeName")
        or spec.get("storageClassName") != STORAGE_CLASS
        or meta.get("deletionTimestamp")
    ):
        return None
    name = f"pvc-{meta['uid']}"
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {})["storage"]},
            "accessModes": spec.get("accessModes"),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "csi": {"driver": PROVISIONER, "volumeHandle": name},
        },
    }


def released(pv: dict[str, Any]) -> bool:
    """A volume of ours whose claim is gone: deleted (reclaim policy Delete)."""
    annotations = pv["metadata"].get("annotations") or {}
    return annotations.get("pv.kubernetes.io/provisioned-by") == PROVISIONER and (pv.get("status") or {}).get(
        "phase"
    ) in {"Released", "Failed"}


def on_claim(core: client.CoreV1Api, pvc: dict[str, Any]) -> None:
    pv = volume_for(pvc)
    if pv is None:
        return
    try:
        core.create_persistent_volume(pv)
    except ApiException as exc:
        if exc.status != 409:
            raise


def on_volume(core: client.CoreV1Api, pv: dict[str, Any]) -> None:
    if not released(pv) or pv["metadata"].get("deletionTimestamp"):
        return
    try:
        core.delete_persistent_volume(pv["metadata"]["name"])
    except ApiException as exc:
        if exc.status != 404:
            raise


def follow(list_fn: Callable[..., Any], handle: Callable[[dict[str, Any]], None]) -> None:
    """List, then watch, handing every object to `handle` as a plain dict; forever. A storage
    driver's informer, in short: no polling, so an idle cluster costs nothing and a busy one
    one event per change (a loop listing every claim twice a second cost a busy cluster more
    CPU than the operator it tests)."""
    version = ""
    while True:
        try:
            if not version:
                listing = json.loads(list_fn(_preload_content=False).data)
                version = listing["metadata"]["resourceVersion"]
                for item in listing["items"]:
                    handle(item)
            for event in watch.Watch(return_type="object").stream(
                list_fn, resource_version=version, timeout_seconds=60, allow_watch_bookmarks=True
            ):
                obj = event["object"]
                version = obj["metadata"].get("resourceVersion") or version
                if event["type"] in {"ADDED", "MODIFIED"}:
                    handle(obj)
            version = ""  # each minute, a full list: what a failed create missed is retried
        except ApiException as exc:
            if exc.status == 410:  # too old: list again
                version = ""
            else:
                print(f"provisioner: {exc.status} {exc.reason}", file=sys.stderr, flush=True)
                time.sleep(0.5)
        except Exception as exc:  # a dropped connection: watch again from the last version
            print(f"provisioner: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            time.sleep(0.5)


def main() -> int:
    config.load_kube_config(config_file=sys.argv[1])
    ensure_storage_class(client.StorageV1Api())
    core = client.CoreV1Api()
    volumes = threading.Thread(
        target=follow, args=(core.list_persistent_volume, lambda pv: on_volume(core, pv)), daemon=True
    )
    volumes.start()
    follow(core.list_persistent_volume_claim_for_all_namespaces, lambda pvc: on_claim(core, pvc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
