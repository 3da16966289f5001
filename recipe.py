"""Training recipes: named sets of flag values (RECIPES), and the optimizer and schedule a recipe trains with.

    python train.py --data-path DATA --recipe cpu-43min          # the recipe's flags become the run's defaults
    python train.py --data-path DATA --recipe cpu-43min --lr 1e-4  # a typed flag wins over the recipe's value

A recipe holds every flag it needs, --weights none included, so it runs offline. The cpu-*
recipes are wall-clock budgets (--time-budget, see budget.py), not epochs: each was chosen
on a split that is not reported (--seed 1) and measured on others (docs/results.md).

The optimizer and lr schedule, as torchvision's references/detection name them:

    --opt sgd|adamw                  SGD with momentum (the tutorial's), or AdamW
    --lr-scheduler steplr            lr x gamma every --lr-step-size epochs (the tutorial's)
                   multisteplr       lr x gamma at each epoch of --lr-steps
                   cosineannealinglr lr follows half a cosine from --lr down to 0 at --epochs
    --norm-weight-decay              weight decay of normalization layers' parameters (default: --weight-decay)

The schedule steps once per epoch; the first epoch also warms the lr up linearly (engine.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

from utils import UserError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("steplr", "multisteplr", "cosineannealinglr")
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)

# The tutorial's SGD, train.py's defaults: one definition for every command that builds an optimizer.
LR, MOMENTUM, WEIGHT_DECAY = 0.005, 0.9, 5e-4

# CPU, from scratch: ResNet-18 FPN with a light mask head and a quarter of the sampled RoIs (2.6x R50's speed per image
# at 320), every orientation of a top-down picture, AdamW (0.328 after 10 epochs against SGD's 0.301 on --seed 1), a
# cosine schedule stretched over the epochs that fit the budget. Batch 2 at lr 0.0003, the box recipe's: twice the
# steps in the same minutes; on --seed 1 (AMD EPYC Zen 5, 12 minutes, 21 epochs each) mask AP 0.496 against 0.429 at
# batch 4 and lr 0.0002, box AP 0.503 against 0.449.
_CPU_MASKS = {
    "model": "maskrcnn_resnet18_fpn", "mask_head": [2, 128], "box_batch_size_per_image": 128, "weights": "none",
    "min_size": 320, "max_size": 640, "batch_size": 2, "augmentation": "topdown", "opt": "adamw", "lr": 0.0003,
    "weight_decay": 0.05, "norm_weight_decay": 0.0, "lr_scheduler": "cosineannealinglr",
}  # fmt: skip
# The levers that won on --seed 1 (docs/results.md, "Levers"): a 128-channel pyramid and bfloat16 autocast took
# cpu-12min from 4 epochs and mask AP 0.203 to 11 epochs and 0.368 on the 2-core AMD EPYC; on a CPU without bfloat16
# instructions --amp says so and trains in float32.
_CPU_LEVERS = {"fpn_channels": 128, "amp": True}
# name: (what it is in one line, the settings it gives: argparse names, as args.json holds them)
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "cpu-12min": ("masks on a CPU from scratch in 12 minutes: ResNet-18 FPN, 320 px, AdamW, cosine",
                  {**_CPU_MASKS, **_CPU_LEVERS, "time_budget": 12.0}),
    # At 320 pixels its AP flattens after about 50 epochs, held back by the small leaves; at 416 on --seed 1 (AMD EPYC
    # Zen 5, 43 minutes): 66 epochs, mask AP 0.604 and box AP 0.594 against 76 epochs, 0.585 and 0.586 at 320 (mask
    # AP of the small leaves 0.415 against 0.359); 480 gave 59 epochs, 0.596 and 0.592. Where its AP flattened,
    # torchvision's own mask head (4 x 256) then won on --seed 1 (AMD EPYC Zen 4, Dec 6, one run after the other):
    # 28 epochs, mask AP 0.606 and box AP 0.540, against 38 epochs, 0.570 and 0.561 with cpu-12min's 2 x 128.
    "cpu-43min": ("masks on a CPU from scratch in 43 minutes: cpu-12min's recipe for longer, at 416 px, with "
                  "torchvision's mask head",
                  {**_CPU_MASKS, **_CPU_LEVERS, "mask_head": [4, 256], "min_size": 416, "max_size": 832,
                   "time_budget": 43.0}),
    # cpu-12min's recipe without the mask head. Batch 2 and lr 0.0003 won here first: box AP 0.506 after 15 epochs
    # on --seed 1 against 0.458 at batch 4 and lr 0.0002 (both 19 minutes, Intel Xeon). With the levers, on --seed 1
    # on the AMD EPYC: 25 epochs and box AP 0.533, against 9 epochs and 0.459 without them.
    "cpu-box-20min": ("boxes on a CPU from scratch in 20 minutes: Faster R-CNN ResNet-18 FPN, 320 px, AdamW",
                      {**_CPU_MASKS, **_CPU_LEVERS, "model": "fasterrcnn_resnet18_fpn", "mask_head": None,
                       "time_budget": 20.0}),
    # cpu-43min's settings (then at batch 4, lr 0.0002) at 512/800: mask AP 0.441 after 11 epochs (4.9 minutes) on
    # --seed 1 on a shared H200; a GPU has the memory for the larger batch.
    "gpu-5min": ("masks on a GPU from scratch: cpu-12min's model and optimizer at 512-800 px, batch 4, 40 epochs",
                 {**_CPU_MASKS, "min_size": 512, "max_size": 800, "batch_size": 4, "lr": 0.0002, "epochs": 40}),
}  # fmt: skip


def recipe_help() -> str:
    """One line per recipe, for --help."""
    width = max(map(len, RECIPES))
    return "recipes (--recipe NAME):\n" + "\n".join(f"  {name:{width}}  {line}" for name, (line, _) in RECIPES.items())


def recipe_values(name: str, typed: set[str]) -> dict[str, Any]:
    """The settings recipe `name` gives a run whose command line typed the flags `typed` (setting names).

    A typed flag wins over the recipe's value. A typed --epochs cancels the recipe's time
    budget, and a typed --time-budget replaces the recipe's epochs. A typed --model keeps its
    builder's own pyramid width: the recipe's --fpn-channels is its ResNet-18's.
    """
    if name not in RECIPES:
        raise UserError(f"--recipe {name}: no such recipe; choose one of {', '.join(RECIPES)} (train.py --help)")
    values = dict(RECIPES[name][1])
    if "epochs" in typed:
        values.pop("time_budget", None)
    if "time_budget" in typed:
        values.pop("epochs", None)
    if "model" in typed:
        values.pop("fpn_channels", None)
    return {setting: value for setting, value in values.items() if setting not in typed}


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
    """SGD (with `momentum`) or AdamW over the model's trainable parameters.

    AdamW is torch's fused kernel on a CPU or a GPU: one pass over each parameter where the default makes several
    (on 2 CPU cores, 0.03 s a step against 0.15 s for 40 M parameters; SGD's fused kernel gains nothing there)."""
    groups = parameter_groups(model, weight_decay, norm_weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        fused = all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
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
