"""--model-ema: an exponential moving average of the weights, the model that is evaluated and saved.

torchvision's classification references name the flag (`--model-ema`, `--model-ema-decay`); the decay ramps in as
Ultralytics' ModelEMA ramps it, so that the average follows the weights closely while they move fast at the start:

    decay(n) = decay * (1 - exp(-n / ramp)),  after the n-th optimizer step,

where Ultralytics takes a ramp of 2000 steps. Our runs are short (cpu-12min trains about 300 steps of 4 images), so
the ramp here is the average's own window, 1 / (1 - decay) steps: 100 for the default decay 0.99. Every floating-point
entry of the state dict is averaged, BatchNorm's running statistics included; integer counters are copied.

best.pth, the checkpoint's "model" and the evaluation after each epoch are the average; checkpoint.pth also keeps the
raw weights ("model_raw") and the number of steps averaged, so that a resume trains on where it stopped.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """The moving average of `model`'s weights (module docstring), in a copy of it: `module`."""

    def __init__(self, model: nn.Module, decay: float, updates: int = 0) -> None:
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay, self.updates = decay, updates
        self.ramp = 1 / (1 - decay)

    def rate(self) -> float:
        """The weight of the average in the next update (the decay after the ramp)."""
        return self.decay * (1 - math.exp(-self.updates / self.ramp))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step more of the average: call after each optimizer step. `model` may be DDP-wrapped."""
        self.updates += 1
        rate = self.rate()
        current = getattr(model, "module", model).state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.dtype.is_floating_point:
                average.lerp_(value.to(average.dtype), 1 - rate)
            else:
                average.copy_(value)

    def training_state(self, model: nn.Module) -> dict[str, Any]:
        """What checkpoint.pth keeps beside the average (its "model"): the raw weights and the steps averaged."""
        return {"model_raw": getattr(model, "module", model).state_dict(), "ema_updates": self.updates}

    def restore(self, checkpoint: dict[str, Any], model: nn.Module) -> None:
        """A resume: the average is the checkpoint's "model", the raw weights go back into `model`."""
        self.module.load_state_dict(checkpoint["model"])
        getattr(model, "module", model).load_state_dict(checkpoint["model_raw"])
        self.updates = checkpoint["ema_updates"]
