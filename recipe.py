"""The optimizer and learning-rate schedule of a training recipe, as torchvision's references/detection name them.

    --opt sgd|adamw                  SGD with momentum (the tutorial's), or AdamW
    --lr-scheduler steplr            lr x gamma every --lr-step-size epochs (the tutorial's)
                   multisteplr       lr x gamma at each epoch of --lr-steps
                   cosineannealinglr lr follows half a cosine from --lr down to 0 at --epochs
    --norm-weight-decay              weight decay of normalization layers' parameters (default: --weight-decay)

The schedule steps once per epoch; the first epoch also warms the lr up linearly (engine.py).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("steplr", "multisteplr", "cosineannealinglr")
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)

# The tutorial's SGD, train.py's defaults: one definition for every command that builds an optimizer.
LR, MOMENTUM, WEIGHT_DECAY = 0.005, 0.9, 5e-4


def parameter_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float | None) -> list[dict]:
    """The trainable parameters, in one group, or two when normalization layers get their own weight decay."""
    if norm_weight_decay is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    norm, other = [], []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.requires_grad:
                (norm if isinstance(module, NORM_LAYERS) else other).append(param)
    groups = [{"params": other, "weight_decay": weight_decay}, {"params": norm, "weight_decay": norm_weight_decay}]
    return [group for group in groups if group["params"]]


def make_optimizer(
    model: nn.Module,
    name: str = "sgd",
    lr: float = LR,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    norm_weight_decay: float | None = None,
) -> torch.optim.Optimizer:
    """SGD (with `momentum`) or AdamW over the model's trainable parameters."""
    groups = parameter_groups(model, weight_decay, norm_weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str = "steplr",
    epochs: int = 10,
    step_size: int = 3,
    steps: list[int] | None = None,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch lr schedule `name` (see the module docstring)."""
    if name == "steplr":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "multisteplr":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps or [], gamma=gamma)
    if name == "cosineannealinglr":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    raise ValueError(f"lr scheduler must be one of {SCHEDULERS}, got {name!r}")


def retarget_scheduler(
    scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int, step_size: int, steps: list[int] | None, gamma: float
) -> None:
    """After load_state_dict (which restores the saved run's settings): the schedule these settings describe.

    Unchanged settings change nothing, so a resume stays exact; a resume that changes
    --epochs moves a cosine schedule's end there, from the lr it has reached.
    """
    if isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
        scheduler.step_size, scheduler.gamma = step_size, gamma
    elif isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
        scheduler.milestones, scheduler.gamma = Counter(steps or []), gamma
    elif isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        scheduler.T_max = max(epochs, 1)


def set_base_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, lr: float) -> None:
    """Change the base learning rate of a resumed run, keeping the schedule's progress (its decays so far)."""
    factor = lr / scheduler.base_lrs[0]
    scheduler.base_lrs = [base * factor for base in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["initial_lr"] *= factor
        group["lr"] *= factor
