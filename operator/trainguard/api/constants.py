"""Every name trainguard and Kubernetes agree on, in one place: the API group, label and annotation
keys, container names, resource names. Everything else imports them from here."""

from __future__ import annotations

GROUP = "trainguard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

MANAGED_BY = "trainguard"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"

# On a job's children: which job (by name and by uid), which tenant, which replica and attempt.
LABEL_JOB = f"{GROUP}/job-name"
LABEL_JOB_UID = f"{GROUP}/job-uid"
LABEL_TENANT = f"{GROUP}/tenant"
LABEL_REPLICA = f"{GROUP}/replica-index"
LABEL_ATTEMPT = f"{GROUP}/attempt"
# On the reconciler pod that holds the Lease: the integrity Service sends sidecars' reports there.
LABEL_LEADER = f"{GROUP}/reconciler-leader"

# On a TrainingJob, set by the mutating webhook at creation: the image it verified and pinned. The
# validating webhook is called for a create only when the final object's image differs from it
# (a later mutating webhook changed the job): see admission/configurations.py.
ANNOTATION_ADMITTED_IMAGE = f"{GROUP}/admitted-image"

# On a namespace: the tenant that owns it. The pod guard's webhooks select namespaces by it.
TENANT_NAMESPACE_LABEL = LABEL_TENANT

GPU_RESOURCE = "nvidia.com/gpu"
TRAINER_CONTAINER = "trainer"
SIDECAR_CONTAINER = "integrity-sidecar"
# The init container that checks verified shared inputs against their signed manifests.
VERIFY_INPUTS_CONTAINER = "verify-inputs"
# Set by the operator in a pod with verified shared folders: the tenant's trusted signers (JSON,
# public keys only), for the verify-inputs container and the trainer; and, in the trainer, the
# mount paths of the verified folders (JSON list).
INPUT_SIGNERS_ENV = "TRAINGUARD_INPUT_SIGNERS"
VERIFIED_INPUTS_ENV = "TRAINGUARD_VERIFIED_INPUTS"

# The RoleBinding that gives a tenant's members the researcher role in its namespaces.
MEMBERS_BINDING = "trainguard-tenant-members"

# The finalizer kopf keeps on TrainingJobs while their reconcile daemon runs.
FINALIZER = f"{GROUP}/finalizer"

# Kueue (kubernetes-sigs/kueue, API v1beta2): the quota and queueing controller trainguard renders
# each Tenant's objects for. A tenant's ClusterQueue is named after it; each of its namespaces has
# one LocalQueue, the only one its jobs use.
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
KUEUE_API_VERSION = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
KUEUE_JOB_UID_LABEL = f"{KUEUE_GROUP}/job-uid"  # Kueue names the preemptor's job by it
CLUSTER_QUEUE_PREFIX = "tenant-"
LOCAL_QUEUE = "trainguard"
GPU_CEILING_QUOTA = "trainguard-gpu-ceiling"  # the ResourceQuota backstop in each tenant namespace
WORKLOAD_POD_SET = "replicas"
