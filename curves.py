"""Training curves: curves.png after every epoch, and the same scalars for TensorBoard.

Both read the records that train.py writes to metrics.jsonl (one dict per epoch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import utils

LOSSES = ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
# COCOeval's summary numbers worth a curve: (index in its 12 stats, name).
AP_STATS = ((0, "AP"), (1, "AP50"))


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one epoch's record to plot: "loss/<name>", "<bbox|segm>/<AP|AP50>", "lr"."""
    values = {f"loss/{name}": record[name] for name in LOSSES if name in record}
    for iou_type in ("bbox", "segm"):
        for index, name in AP_STATS:
            if iou_type in record:
                values[f"{iou_type}/{name}"] = record[iou_type][index]
    values["lr"] = record["lr"]
    return values


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Losses (left) and AP on the test split (right) per epoch, as a PNG written atomically."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, ap_axes = figure.subplots(1, 2)
    epochs = [record["epoch"] for record in history]
    series = [scalars(record) for record in history]
    for key in series[0] if series else []:
        values = [s.get(key) for s in series]
        axes = loss_axes if key.startswith("loss/") else ap_axes if key != "lr" else None
        if axes is not None:
            axes.plot(epochs, values, marker="o", markersize=3, label=key.removeprefix("loss/"))
    loss_axes.set(title="training losses (mean per epoch)", xlabel="epoch", yscale="log")
    ap_axes.set(title="COCO AP on the test split", xlabel="epoch", ylim=(0, 1))
    best = max(history, key=lambda r: r["segm"][0] if "segm" in r else r["bbox"][0], default=None)
    if best is not None:
        ap_axes.axvline(best["epoch"], color="grey", linestyle=":", label=f"best (epoch {best['epoch']})")
    for axes in (loss_axes, ap_axes):
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize="small")
    utils.atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=100))


class TensorBoardLogger:
    """scalars() of each epoch under --output-dir/tensorboard; a resumed run replaces the epochs it redoes."""

    def __init__(self, log_dir: str | Path, start_epoch: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise utils.UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
        self.writer = SummaryWriter(str(log_dir), purge_step=start_epoch)

    def log(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
