"""The scheduling bench's options: which job classes run (`--classes`), Kueue's own Job webhooks
in the Kueue-alone arm, and where the processes run (`--placement split`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from bench.scheduling_bench import BASELINE, kueue_job_webhooks, pin, select_classes, split_cpus


def test_classes_are_chosen_by_name_in_the_baselines_order() -> None:
    assert [c.name for c in select_classes("small,medium")] == ["small", "medium"]
    assert [c.name for c in select_classes(" large , small ")] == ["small", "large"]
    assert select_classes("small,medium,large") == BASELINE


@pytest.mark.parametrize("names", ["", " , ", "tiny", "small,huge"])
def test_an_unknown_or_empty_class_list_is_refused_with_the_known_names(names: str) -> None:
    with pytest.raises(ValueError, match=r"'small', 'medium', 'large'"):
        select_classes(names)


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
