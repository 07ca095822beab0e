"""The scheduling bench's options: which job classes run (`--classes`), Kueue's own Job webhooks
in the Kueue-alone arm (and in the admission bench's reference arms) and the batch Jobs they see,
and where the processes run (`--placement split`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from bench.admission_bench import ratio
from bench.scheduling_bench import (
    BASELINE,
    GPU,
    kueue_job_webhooks,
    pin,
    queued_batch_job,
    select_classes,
    split_cpus,
)

from trainguard.api.constants import LOCAL_QUEUE


def test_classes_are_chosen_by_name_in_the_baselines_order() -> None:
    assert [c.name for c in select_classes("small,medium")] == ["small", "medium"]
    assert [c.name for c in select_classes(" large , small ")] == ["small", "large"]
    assert select_classes("small,medium,large") == BASELINE


@pytest.mark.parametrize("names", ["", " , ", "tiny", "small,huge"])
def test_an_unknown_or_empty_class_list_is_refused_with_the_known_names(names: str) -> None:
    with pytest.raises(ValueError, match=r"'small', 'medium', 'large'"):
        select_classes(names)


def test_a_queued_batch_job_is_suspended_on_the_local_queue_with_its_gpus_per_pod() -> None:
    job = queued_batch_job(
        "j-1", pods=2, gpus_per_pod=10, labels={"bench": "r1"}, pod_annotations={"run": "1"}
    )
    assert job["metadata"] == {
        "name": "j-1",
        "labels": {"kueue.x-k8s.io/queue-name": LOCAL_QUEUE, "bench": "r1"},
    }
    spec = job["spec"]
    assert spec["suspend"] is True
    assert (spec["parallelism"], spec["completions"]) == (2, 2)
    assert spec["template"]["metadata"] == {"annotations": {"run": "1"}}
    (container,) = spec["template"]["spec"]["containers"]
    assert container["resources"] == {"requests": {GPU: "10"}, "limits": {GPU: "10"}}
    plain = queued_batch_job("j-2", pods=1, gpus_per_pod=1)
    assert plain["metadata"]["labels"] == {"kueue.x-k8s.io/queue-name": LOCAL_QUEUE}
    assert plain["spec"]["template"]["metadata"] == {"annotations": {}}


def test_the_admission_benchs_ratios_are_against_the_baseline_given() -> None:
    base = {"p50_ms": 80.0, "p99_ms": 200.0, "requests_per_second": 1000.0}
    arm = {"p50_ms": 160.0, "p99_ms": 300.0, "requests_per_second": 500.0}
    assert ratio(arm, base) == {"p50": 2.0, "p99": 1.5, "requests_per_second": 0.5}


def test_kueue_job_webhooks_are_its_charts_mutating_and_validating_job_hooks() -> None:
    mutating, validating = kueue_job_webhooks(26389, "Q0E=")
    assert mutating["kind"] == "MutatingWebhookConfiguration"
    assert validating["kind"] == "ValidatingWebhookConfiguration"
    (mjob,) = mutating["webhooks"]
    (vjob,) = validating["webhooks"]
    assert mjob["name"] == "mjob.kb.io"
    assert mjob["clientConfig"] == {"url": "https://127.0.0.1:26389/mutate-batch-v1-job", "caBundle": "Q0E="}
    assert mjob["rules"] == [
        {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"]}
    ]
    assert vjob["name"] == "vjob.kb.io"
    assert vjob["clientConfig"]["url"] == "https://127.0.0.1:26389/validate-batch-v1-job"
    assert vjob["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    for hook in (mjob, vjob):
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"


def test_split_gives_the_control_plane_the_lower_half_and_each_side_at_least_one_cpu() -> None:
    assert split_cpus({0, 1}) == ({0}, {1})
    assert split_cpus({4, 5, 6}) == ({4}, {5, 6})
    assert split_cpus(set(range(8))) == ({0, 1, 2, 3}, {4, 5, 6, 7})
    with pytest.raises(ValueError, match="at least 2 CPUs"):
        split_cpus({3})


def test_pin_moves_every_thread_of_a_process() -> None:
    before = os.sched_getaffinity(0)
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    one = {min(before)}
    try:
        pin(os.getpid(), one)
        tasks = [int(t.name) for t in Path(f"/proc/{os.getpid()}/task").iterdir()]
        assert len(tasks) >= 2
        assert all(os.sched_getaffinity(t) == one for t in tasks)
    finally:
        pin(os.getpid(), before)
        release.set()
        worker.join()
    assert os.sched_getaffinity(0) == before
