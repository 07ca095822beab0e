"""A dynamic volume provisioner for the simulated cluster.

kwok nodes mount nothing, but kube-scheduler still requires every PersistentVolumeClaim of a
pod to be bound. This process plays the storage driver: for each pending claim of the
`standard` StorageClass it creates a PersistentVolume pre-bound to the claim, and it deletes
released volumes. It runs beside the control plane, started and stopped by the launcher.
"""

from __future__ import annotations

import sys
import time

from kubernetes import client, config
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


def sync(core: client.CoreV1Api) -> None:
    classes = {STORAGE_CLASS}
    for pvc in core.list_persistent_volume_claim_for_all_namespaces().items:
        if (
            pvc.status.phase != "Pending"
            or pvc.spec.volume_name
            or pvc.spec.storage_class_name not in classes
        ):
            continue
        name = f"pvc-{pvc.metadata.uid}"
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": pvc.spec.resources.requests["storage"]},
                "accessModes": pvc.spec.access_modes,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": pvc.spec.storage_class_name,
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": pvc.metadata.namespace,
                    "name": pvc.metadata.name,
                    "uid": pvc.metadata.uid,
                },
                "csi": {"driver": PROVISIONER, "volumeHandle": name},
            },
        }
        try:
            core.create_persistent_volume(pv)
        except ApiException as exc:
            if exc.status != 409:
                raise
    for pv in core.list_persistent_volume().items:
        annotations = pv.metadata.annotations or {}
        if annotations.get("pv.kubernetes.io/provisioned-by") == PROVISIONER and pv.status.phase in {
            "Released",
            "Failed",
        }:
            try:
                core.delete_persistent_volume(pv.metadata.name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def main() -> int:
    config.load_kube_config(config_file=sys.argv[1])
    ensure_storage_class(client.StorageV1Api())
    core = client.CoreV1Api()
    while True:
        try:
            sync(core)
        except ApiException as exc:
            print(f"provisioner: {exc.status} {exc.reason}", file=sys.stderr, flush=True)
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
