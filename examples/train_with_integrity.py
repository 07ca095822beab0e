"""A training loop guarded by trainguard's weight-verification sidecar (two added lines, marked).

    python examples/train_with_integrity.py --steps 100

Inside a trainguard pod the sidecar's socket is in TRAINGUARD_INTEGRITY_SOCKET; locally, start
`python -m trainguard.sidecar` first and pass --socket.
"""

from __future__ import annotations

import argparse
import os

import torch

from trainguard.trainer import IntegrityGuard


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--socket", default=os.environ.get("TRAINGUARD_INTEGRITY_SOCKET"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(
        device
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    # trainguard: share weights and optimizer state; check them, the hyperparameters and the seeds
    # just before every optimizer.step() against what the previous one left
    guard = IntegrityGuard(
        model, optimizer, args.socket, schedulers=[scheduler], generators=IntegrityGuard.default_generators()
    )
    data = torch.Generator().manual_seed(1234)
    for _ in range(args.steps):
        x = torch.randn(32, 64, generator=data).to(device)
        y = torch.randint(0, 10, (32,), generator=data).to(device)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    guard.close()  # trainguard
    print(f"trained {args.steps} steps, final loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
