"""What the optimizer and the generators will do next: taken from PyTorch objects, compared by the
sidecar, carried in messages. Pure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainguard.integrity.protocol import (
    Adjust,
    Begin,
    ProtocolError,
    StepSequence,
    control_changes,
    parse_request,
)
from trainguard.trainer.guard import controls


def test_every_param_group_number_and_each_generator_seed_is_a_control() -> None:
    net = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(
        [{"params": [net.weight]}, {"params": [net.bias], "lr": 0.0, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(7)
    values = controls(optimizer, {"data": generator})
    assert values["optimizer.groups"] == 2
    assert values["optimizer.group0.params"] == 1
    assert values["optimizer.group0.lr"] == 1e-3
    assert (values["optimizer.group0.betas.0"], values["optimizer.group0.betas.1"]) == (0.9, 0.95)
    assert values["optimizer.group1.lr"] == 0.0
    assert values["optimizer.group0.maximize"] == 0  # flags as 0/1: maximize would ascend the loss
    assert values["rng.data.seed"] == 7
    assert "rng.data.offset" not in values  # CPU generators have no Philox offset
    assert "optimizer.group0.foreach" not in values  # None: configuration, not a number
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values())


def test_a_learning_rate_kept_as_a_tensor_is_read_as_its_number() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=torch.tensor(0.01))
    assert controls(optimizer, {})["optimizer.group0.lr"] == pytest.approx(0.01)


def test_changes_are_named_by_kind_and_offsets_may_only_grow() -> None:
    before = {"optimizer.group0.lr": 0.001, "rng.cpu.seed": 0, "rng.cuda:0.seed": 5, "rng.cuda:0.offset": 64}
    assert control_changes(before, dict(before)) == {}
    assert control_changes(before, {**before, "rng.cuda:0.offset": 128}) == {}  # numbers were drawn
    assert control_changes(before, {**before, "rng.cuda:0.offset": 0}) == {
        "RandomState": ["rng.cuda:0.offset went back from 64 to 0"]
    }
    assert control_changes(before, {**before, "optimizer.group0.lr": 0.1, "rng.cpu.seed": 9}) == {
        "Hyperparameters": ["optimizer.group0.lr 0.001 -> 0.1"],
        "RandomState": ["rng.cpu.seed 0 -> 9"],
    }
    grown = {**before, "optimizer.group1.lr": 0.5}  # a param group added between steps
    assert control_changes(before, grown) == {"Hyperparameters": ["optimizer.group1.lr absent -> 0.5"]}


def test_adjusting_is_allowed_between_steps_only() -> None:
    steps = StepSequence()
    assert steps.adjust() is None  # before the first step: setting up
    steps.begin(0)
    assert steps.adjust() == "hyperparameters adjusted during step 0 (between begin and end)"
    steps.end(0)
    assert steps.adjust() is None


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ({"op": "begin", "step": 1, "controls": {"lr": "fast"}}, "controls.lr must be a number"),
        ({"op": "begin", "step": 1, "controls": {"lr": True}}, "controls.lr must be a number"),
        ({"op": "begin", "step": 1, "controls": {"": 1}}, "is not a name of 1 to 200 characters"),
        ({"op": "begin", "step": 1, "controls": [1]}, "controls must be an object"),
        ({"op": "adjust", "reason": "", "before": {}, "after": {}}, "reason must be text"),
    ],
)
def test_controls_from_the_trainer_are_checked(message: dict[str, object], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse_request(message, folder=Path("."))


def test_controls_cross_the_socket_unchanged() -> None:
    begin = Begin(step=3, controls={"optimizer.group0.lr": 0.001, "rng.cpu.seed": 2**63 + 5})
    assert parse_request(begin.wire(), folder=Path(".")) == begin
    assert "controls" not in Begin(step=3).wire()  # nothing watched: the message is as before
    adjust = Adjust(reason="StepLR.step()", before={"a": 1}, after={"a": 2})
    assert parse_request(adjust.wire(), folder=Path(".")) == adjust
