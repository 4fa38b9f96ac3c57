"""A few optimizer steps with a controller: the training loop several tests share."""
import torch.nn.functional as F


def train_steps(model, opt, ctrl, x, y, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        ctrl.step()
