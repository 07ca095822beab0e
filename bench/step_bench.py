"""What the integrity guard adds to a real-shaped training step: a decoder-only transformer (bf16
weights, AdamW, batch 8 x 1,024 tokens, vocabulary 32,000) trained alone, then guarded by
IntegrityGuard(model, optimizer) with a real sidecar process in Enforce mode, on the same model
and the same batch in the same run.

The guard checks around `optimizer.step()` only (`GuardedUpdate`): begin(t) right before it and
end(t) right after (or the guard's own hooks on optimizer.step, where it sets them), so the sidecar
checks that nothing changes the state between the end of one update and the start of the next
(forward, backward, the rest of the loop). The target: the guard's added time per step at most
1.5x two reads of the guarded state (parameters, optimizer state) at the speed of
the read-only Triton kernel of bench/gpu_fingerprint.py, timed in the same run on the guard's own
regions. Also reports false alarms (violations in the sidecar's reports: any is a failure), and
where the added time goes: the cost of the two synchronisations alone (the same loop with
torch.cuda.synchronize before and after optimizer.step, no guard), the sidecar's fingerprint time
(its StepEnd reports), and the wall time of guard.begin and guard.end.

    python -m bench.step_bench --shape tiny              # CPU, seconds (tests/tools runs it)
    python -m bench.step_bench --shape 403m              # GPU: about 405M parameters
    python -m bench.step_bench --shape fill              # GPU: the largest that fits, with headroom
    python -m bench.step_bench --shape tiny --layers 27 --profile   # cProfile of begin/end

Writes step_<shape>.json to $OUT or bench/results/ and prints a one-line summary; exits 1 on a
false alarm.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.load import write_report
from e2e.cluster.integrity import SidecarProcess
from trainguard.integrity.reports import StepEnd, Verified, Violation
from trainguard.trainer import IntegrityGuard, IntegrityViolation

TARGET_RATIO = 1.5  # added time per step / two reads of the guarded state at the read-only kernel's speed
SIDECAR_HEADROOM = 4 * 2**30  # the sidecar's CUDA context and per-chunk terms, and the allocator's slack
FILL_FRACTION = 0.75  # of the free memory the "fill" shape's estimated peak may take
FILL_MAX_PARAMS = 8e9  # keeps the "fill" steps within a few minutes on any one GPU
FILL_RETRIES = 2  # a quarter fewer layers each, should the estimate be short of a GPU's truth


@dataclass(frozen=True)
class Shape:
    name: str
    d_model: int
    layers: int
    heads: int
    vocab: int = 32_000
    batch: int = 8
    tokens: int = 1024

    @property
    def params(self) -> int:
        d = self.d_model
        return self.layers * (12 * d * d + 4 * d) + 2 * self.vocab * d + 2 * d

    def peak_bytes(self) -> int:
        """A generous estimate of the peak GPU memory of one step: weights, gradients and AdamW's
        two moments (bf16, 8 bytes a parameter), the activations autograd keeps (about 40 bytes
        per token and model dimension per layer in bf16) and the logits with their loss."""
        tokens = self.batch * self.tokens
        return 8 * self.params + 40 * tokens * self.d_model * self.layers + 10 * tokens * self.vocab + 2**30


SHAPES = {
    "tiny": Shape("tiny", d_model=64, layers=2, heads=4, vocab=512, batch=2, tokens=64),
    "403m": Shape("403m", d_model=1024, layers=27, heads=16),  # 405M parameters
}
FILL_WIDTH, FILL_HEADS = 2560, 20  # the "fill" shape grows by layers at this width (head dim 128)


def fill_shape(free_bytes: int) -> Shape:
    """The deepest model of width FILL_WIDTH whose estimated peak fits FILL_FRACTION of the free
    memory less the sidecar's headroom (about 3B parameters on an 80 GB H100)."""
    budget = FILL_FRACTION * free_bytes - SIDECAR_HEADROOM
    shape = Shape("fill", d_model=FILL_WIDTH, layers=1, heads=FILL_HEADS)
    while True:
        deeper = replace(shape, layers=shape.layers + 1)
        if deeper.peak_bytes() > budget or deeper.params > FILL_MAX_PARAMS:
            return shape
        shape = deeper


class Block(torch.nn.Module):
    def __init__(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        d = shape.d_model
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.heads = shape.heads
        self.norm1 = torch.nn.LayerNorm(d, **kw)
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False, **kw)
        self.out = torch.nn.Linear(d, d, bias=False, **kw)
        self.norm2 = torch.nn.LayerNorm(d, **kw)
        self.up = torch.nn.Linear(d, 4 * d, bias=False, **kw)
        self.down = torch.nn.Linear(4 * d, d, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.down(F.gelu(self.up(self.norm2(x))))
        return out


class Decoder(torch.nn.Module):
    def __init__(self, shape: Shape, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.embed = torch.nn.Embedding(shape.vocab, shape.d_model, **kw)
        self.blocks = torch.nn.ModuleList(Block(shape, device, dtype) for _ in range(shape.layers))
        self.norm = torch.nn.LayerNorm(shape.d_model, **kw)
        self.head = torch.nn.Linear(shape.d_model, shape.vocab, bias=False, **kw)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.norm(x))
        return logits


class GuardedUpdate:
    """The one place the guard meets the training loop: its check around optimizer.step(), and
    the trainer-side wall time of its two calls (begin, end) at each recorded step.

    A guard that hooks optimizer.step() itself (it adds step hooks to the optimizer it is given)
    is left to do so, and its calls are timed by hooks of ours registered around its own; with
    one that does not, begin(t) comes right before optimizer.step() and end(t) right after."""

    def __init__(self, optimizer: torch.optim.Optimizer, make_guard: Callable[[], IntegrityGuard]) -> None:
        self.optimizer = optimizer
        self.begin: list[float] = []
        self.end: list[float] = []
        self.recording = False
        self.profile: cProfile.Profile | None = None  # enabled inside the guard's calls only
        self._marks: dict[str, float] = {}
        before = len(optimizer._optimizer_step_pre_hooks)
        self._hooks = [
            optimizer.register_step_pre_hook(self._mark("before_begin")),
            optimizer.register_step_post_hook(self._mark("before_end")),
        ]
        self.guard = make_guard()
        self.hooked = len(optimizer._optimizer_step_pre_hooks) > before + 1
        if self.hooked:
            self._hooks += [
                optimizer.register_step_pre_hook(self._mark("after_begin")),
                optimizer.register_step_post_hook(self._mark("after_end")),
            ]
        else:
            self.close_hooks()

    def _at(self, name: str) -> None:
        profile = self.profile if self.recording else None
        if profile is not None and name.startswith("after"):
            profile.disable()
        self._marks[name] = time.perf_counter()
        if profile is not None and name.startswith("before"):
            profile.enable()

    def _mark(self, name: str) -> Callable[..., None]:
        return lambda *_: self._at(name)

    def close_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def __call__(self, step: int) -> None:
        if self.hooked:
            self.optimizer.step()
        else:
            self._at("before_begin")
            self.guard.begin(step)
            self._at("after_begin")
            self.optimizer.step()
            self._at("before_end")
            self.guard.end(step)
            self._at("after_end")
        if self.recording:
            self.begin.append(self._marks["after_begin"] - self._marks["before_begin"])
            self.end.append(self._marks["after_end"] - self._marks["before_end"])


class Trainer:
    """One model, its optimizer and one fixed batch on one device."""

    def __init__(self, shape: Shape, device: torch.device) -> None:
        torch.manual_seed(0)
        self.device = device
        self.model = Decoder(shape, device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        tokens = torch.randint(0, shape.vocab, (shape.batch, shape.tokens + 1), device=device)
        self.inputs, self.targets = tokens[:, :-1], tokens[:, 1:].reshape(-1)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, update: Callable[[], None]) -> float:
        """Seconds for one step, the GPU's work included (the clock stops after a synchronize)."""
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(self.inputs)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), self.targets)
        loss.backward()  # type: ignore[no-untyped-call]
        del logits
        update()
        self.sync()
        return time.perf_counter() - started

    def run(self, steps: int, update: Callable[[int], None]) -> list[float]:
        return [self.step(functools.partial(update, i)) for i in range(steps)]

    def synced_update(self) -> None:
        """optimizer.step() between two synchronisations, as the guard settles the GPU: what the
        synchronisations alone cost."""
        self.sync()
        self.optimizer.step()
        self.sync()


def read_only_gb_per_second(guard: IntegrityGuard, rounds: int) -> tuple[str, int, float, float]:
    """The read-only kernel over the guard's own regions (every whole 16 KiB chunk of each): its
    name, the bytes read per pass, and the best and median GB/s over `rounds` passes. On a GPU the
    Triton kernel of bench/gpu_fingerprint.py on the CUDA regions (the few bytes of a CPU region,
    AdamW's step counts, left out); on the CPU, torch.sum over the regions as int64."""
    regions = list(guard.regions.values())
    if any(r.device.type == "cuda" for r in regions):
        from bench.gpu_fingerprint import _read_only
        from trainguard.gpu.kernel import CHUNK_PAIRS
        from trainguard.integrity.fingerprint import CHUNK_BYTES

        launches = []
        for region in regions:
            chunks = region.flat.numel() // CHUNK_BYTES if region.device.type == "cuda" else 0
            if chunks:
                words = region.flat[: chunks * CHUNK_BYTES].view(torch.int64)
                sums = torch.empty(chunks, dtype=torch.int64, device=region.device)
                launches.append((chunks, words, sums))

        def read() -> None:
            for chunks, words, sums in launches:
                _read_only[(chunks,)](words, sums, PAIRS=CHUNK_PAIRS)

        name = "read-only Triton kernel (bench/gpu_fingerprint.py)"
        nbytes = sum(chunks * CHUNK_BYTES for chunks, _, _ in launches)
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        read()
        torch.cuda.synchronize()
        seconds = []
        for _ in range(rounds):
            start.record()
            read()
            end.record()
            torch.cuda.synchronize()
            seconds.append(start.elapsed_time(end) / 1000)
    else:
        views = [r.flat[: r.flat.numel() // 8 * 8].view(torch.int64) for r in regions]
        name = "torch.sum over int64 (CPU)"
        nbytes = sum(v.numel() * 8 for v in views)
        seconds = []
        for _ in range(rounds + 1):
            started = time.perf_counter()
            for view in views:
                view.sum()
            seconds.append(time.perf_counter() - started)
        seconds = seconds[1:]
    return name, nbytes, nbytes / min(seconds) / 1e9, nbytes / statistics.median(seconds) / 1e9


def milliseconds(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values) * 1000,
        "mean": statistics.fmean(values) * 1000,
        "min": min(values) * 1000,
        "max": max(values) * 1000,
    }


def profile_summary(profile: cProfile.Profile, lines: int = 25) -> str:
    text = io.StringIO()
    try:
        stats = pstats.Stats(profile, stream=text)
    except TypeError:  # nothing was profiled (a false alarm at the first timed step)
        return "no guard call was profiled"
    stats.sort_stats("tottime").print_stats(lines)
    return text.getvalue()


def measure(
    shape: Shape, device: torch.device, args: argparse.Namespace
) -> tuple[dict[str, Any], str | None]:
    """The report of one shape, and the profile of the guard calls when asked for."""
    trainer = Trainer(shape, device)
    for _ in range(args.warmup):
        trainer.step(trainer.optimizer.step)
    alone_before = trainer.run(args.steps, lambda _: trainer.optimizer.step())
    synced = trainer.run(args.steps, lambda _: trainer.synced_update())
    peak_alone = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    false_alarm: str | None = None
    profile = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        sidecar = SidecarProcess(Path(tmp) / "shared", mode="Enforce").start()
        try:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the regions are allocated outside PyTorch's cache
            update = GuardedUpdate(
                trainer.optimizer,
                lambda: IntegrityGuard(trainer.model, trainer.optimizer, socket_path=sidecar.socket),
            )
            guard = update.guard
            update.profile = profile
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the state's old places, now copied into the regions
            guarded: list[float] = []
            try:
                # The first guarded update compiles the sidecar's kernel (GPU).
                for step in range(1, args.warmup + 1):
                    trainer.step(functools.partial(update, step))
                first = args.warmup + 1
                update.recording = True
                guarded = trainer.run(args.steps, lambda i: update(first + i))
            except IntegrityViolation as exc:
                false_alarm = str(exc)
            # Everything in use on the GPU while guarded: PyTorch's, the regions, the sidecar's.
            in_use = torch.cuda.mem_get_info(device) if device.type == "cuda" else (0, 0)
            state_bytes = sum(r.region.nbytes for r in guard.regions.values())
            regions = {name: r.region.nbytes for name, r in guard.regions.items()}
            tensors = sum(len(r.views) for r in guard.regions.values())
            hooked = update.hooked
            reader, read_bytes, read_best, read_median = read_only_gb_per_second(guard, args.read_rounds)
            update.close_hooks()
            guard.close()
        finally:
            sidecar.stop()
        # Alone again, the state where the guard put it: a drift between the phases shows here.
        alone_after = trainer.run(args.steps, lambda _: trainer.optimizer.step())
        violations = sidecar.reports_of(Violation)
        verified = len(sidecar.reports_of(Verified))
        fingerprint_seconds = [
            r.seconds for r in sidecar.reports_of(StepEnd)[-len(update.end) :] if r.seconds
        ]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    alone = alone_before + alone_after
    alarms = len(violations) + (1 if false_alarm and not violations else 0)
    report: dict[str, Any] = {
        "shape": asdict(shape),
        "params": shape.params,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "guarded_state_bytes": state_bytes,
        "regions": regions,
        "guarded_tensors": tensors,
        # True where the guard hooks optimizer.step itself; else begin/end called around it.
        "guard_hooks_optimizer_step": hooked,
        "memory_bytes": {
            "peak_allocated_alone": peak_alone,
            "peak_allocated_overall": peak,  # PyTorch's allocator: the regions are outside it
            "device_in_use_guarded": in_use[1] - in_use[0],
            "estimated_peak": shape.peak_bytes(),
        },
        "false_alarms": alarms,
        "violations": [v.message for v in violations] or ([false_alarm] if false_alarm else []),
        "verified_steps": verified,
        # Both unguarded phases (before the guard, and after it closed): the baseline.
        "step_ms_alone": milliseconds(alone),
        "step_ms_alone_before_guard": milliseconds(alone_before),
        "step_ms_alone_after_guard": milliseconds(alone_after),
    }
    profiled = profile_summary(profile) if profile is not None else None
    if alarms or not guarded:
        return report, profiled
    added = statistics.median(guarded) - statistics.median(alone)
    two_reads = 2 * state_bytes / (read_best * 1e9)
    report |= {
        "step_ms_guarded": milliseconds(guarded),
        "added_ms_per_step": {
            "median": added * 1000,
            "mean": (statistics.fmean(guarded) - statistics.fmean(alone)) * 1000,
            "percent_of_alone": added / statistics.median(alone) * 100,
        },
        "read_only": {
            "kernel": reader,
            "bytes_per_pass": read_bytes,
            "gb_per_second": read_best,
            "gb_per_second_median": read_median,
        },
        "two_reads_ms": two_reads * 1000,
        "ratio_added_to_two_reads": added / two_reads,
        "target_ratio": TARGET_RATIO,
        "meets_target": added / two_reads <= TARGET_RATIO,
        "breakdown_ms_median": {
            # The same loop with a synchronisation before and after optimizer.step(), no guard.
            "synchronisations": (statistics.median(synced) - statistics.median(alone_before)) * 1000,
            "guard_begin_call": statistics.median(update.begin) * 1000,
            "guard_end_call": statistics.median(update.end) * 1000,
            # The sidecar's own time to fingerprint every region once (StepEnd.seconds).
            "sidecar_fingerprint_at_end": statistics.median(fingerprint_seconds) * 1000
            if fingerprint_seconds
            else None,
        },
    }
    return report, profiled


def summary(report: dict[str, Any]) -> str:
    head = (
        f"step bench {report['shape']['name']} ({report['params'] / 1e6:.2f}M params, "
        f"{report['guarded_state_bytes'] / 1e9:.3g} GB guarded, {report['device']}): "
        f"alone {report['step_ms_alone']['median']:.1f} ms"
    )
    if report["false_alarms"]:
        return f"{head}; FALSE ALARM: {'; '.join(report['violations'])}"
    added, guarded = report["added_ms_per_step"], report["step_ms_guarded"]
    parts = report["breakdown_ms_median"]
    fingerprint = parts["sidecar_fingerprint_at_end"]
    return (
        f"{head}, guarded {guarded['median']:.1f} ms ({added['median']:+.2f} ms, "
        f"{added['percent_of_alone']:+.1f} %); two reads at {report['read_only']['gb_per_second']:.0f} GB/s "
        f"{report['two_reads_ms']:.2f} ms; ratio {report['ratio_added_to_two_reads']:.2f} "
        f"(target {report['target_ratio']}: {'met' if report['meets_target'] else 'NOT met'}); "
        f"syncs {parts['synchronisations']:.2f} ms, begin {parts['guard_begin_call']:.2f} ms, "
        f"end {parts['guard_end_call']:.2f} ms"
        + (f" (sidecar fingerprint {fingerprint:.2f} ms)" if fingerprint is not None else "")
        + f"; {report['verified_steps']} steps verified, no false alarm"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=[*SHAPES, "fill"], default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per phase (default 20, fill 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each phase")
    parser.add_argument("--read-rounds", type=int, default=10, help="timed passes of the read-only kernel")
    parser.add_argument("--layers", type=int, default=None, help="override the shape's depth")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the guard's calls in the timed steps"
    )
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 10 if args.shape == "fill" else 20
    device = torch.device("cpu" if args.shape == "tiny" else "cuda")
    if args.shape == "fill":
        free, _ = torch.cuda.mem_get_info(device)
        shape = fill_shape(free)
    else:
        shape = SHAPES[args.shape]
    if args.layers is not None:
        shape = replace(shape, layers=args.layers)
    for attempt in range(FILL_RETRIES + 1):
        try:
            report, profiled = measure(shape, device, args)
            break
        except torch.cuda.OutOfMemoryError:
            if args.shape != "fill" or attempt == FILL_RETRIES:
                raise
        # Out of memory with the estimate: a quarter shallower, once everything of it is freed.
        gc.collect()
        torch.cuda.empty_cache()
        shape = replace(shape, layers=shape.layers * 3 // 4)
        print(f"out of GPU memory: fill again with {shape.layers} layers", file=sys.stderr)
    report["fill_retries"] = attempt
    write_report(f"step_{shape.name}.json", report)
    print(summary(report))
    if profiled is not None:
        print(profiled)
    return 1 if report["false_alarms"] else 0


if __name__ == "__main__":
    sys.exit(main())
