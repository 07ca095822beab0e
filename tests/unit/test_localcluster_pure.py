"""Pure parts of the local-cluster launcher: certificates, node manifests, ports."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from e2e.cluster import pki
from e2e.cluster.localcluster import ClusterConfig, Ports, _node_manifest


def test_ports_are_ten_consecutive_and_distinct() -> None:
    ports = Ports.from_base(50000)
    assert ports.all() == list(range(50000, 50010))
    assert ports.registry == 50006
    assert ports.kueue_webhook == 50009


def test_node_manifest_offers_gpus_and_carries_the_gpu_taint() -> None:
    node = _node_manifest(2, ClusterConfig(gpus_per_node=4))
    assert node["metadata"]["name"] == "gpu-node-2"  # type: ignore[index]
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"  # type: ignore[index]
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"  # type: ignore[index]
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]  # type: ignore[index]


def test_certificates_chain_to_the_ca_and_name_the_user(tmp_path: Path) -> None:
    ca = pki.ensure_ca(tmp_path, "ca")
    client = pki.ensure_leaf(
        tmp_path, "admin", ca, common_name="alice", organization="system:masters", client=True
    )
    server = pki.ensure_leaf(tmp_path, "srv", ca, common_name="srv", server_names=("127.0.0.1", "localhost"))
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    for pair in (client, server):
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        assert oct(pair.key.stat().st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate(client.cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    sans = x509.load_pem_x509_certificate(server.cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert ipaddress.ip_address("127.0.0.1") in sans.value.get_values_for_type(x509.IPAddress)
    assert "localhost" in sans.value.get_values_for_type(x509.DNSName)


def test_existing_certificates_are_reused(tmp_path: Path) -> None:
    ca = pki.ensure_ca(tmp_path, "ca")
    first = pki.ensure_leaf(tmp_path, "x", ca, common_name="x", client=True).cert.read_bytes()
    again = pki.ensure_leaf(tmp_path, "x", ca, common_name="x", client=True).cert.read_bytes()
    assert first == again
