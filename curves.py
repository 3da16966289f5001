"""Training curves: curves.png after every epoch, and the same scalars for TensorBoard.

Both read the records that train.py writes to metrics.jsonl (one dict per epoch).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import utils
from coco_eval import IOU_TYPES, best_epoch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NOT_LOSSES = ("epoch", "lr", "train_seconds", "eval_seconds")  # a record's other numbers are its mean losses
# COCOeval's summary numbers worth a curve: (index in its stats, name); the same two for keypoints' 10.
AP_STATS = ((0, "AP"), (1, "AP50"))


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one epoch's record to plot: "loss/<name>" for every loss the model reports (each model
    names its own), "<bbox|segm|keypoints>/<AP|AP50>" on the test split, "val/<type>/<AP|AP50>" on the
    validation images that choose best.pth (--val-size), and "lr"."""
    values = {f"loss/{name}": value for name, value in record.items()
              if name not in NOT_LOSSES and isinstance(value, (int, float))}  # fmt: skip
    for prefix, stats in (("", record), ("val/", record.get("val", {}))):
        for iou_type in IOU_TYPES:
            for index, name in AP_STATS:
                if iou_type in stats:
                    values[f"{prefix}{iou_type}/{name}"] = stats[iou_type][index]
    values["lr"] = record["lr"]
    return values


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """curves_figure(history) as a PNG, written atomically."""
    figure = curves_figure(history)
    utils.atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=100))


def new_figure(size: tuple[float, float]) -> Figure:
    """A matplotlib figure of `size` inches, drawn off screen (no display, no pyplot state).

    matplotlib is imported here, when a picture is drawn, not when a module is: it is half a second of every
    train.py, predict.py and test process's start, most of which draw no plot (a --test-only, a refusal)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def curves_figure(history: list[dict[str, Any]]) -> Figure:
    """Losses (left) and AP (right: the test split's, and the validation images' that choose best.pth) per epoch.

    The AP axis spans the data (early AP is often a few hundredths), epochs are whole
    numbers, and each legend sits outside its axes so that it never hides a line.
    """
    from matplotlib.ticker import MaxNLocator

    figure = new_figure((12, 4))
    loss_axes, ap_axes = figure.subplots(1, 2)
    epochs = [record["epoch"] for record in history]
    series = [scalars(record) for record in history]
    top = 0.0
    for key in series[0] if series else []:
        values = [s.get(key) for s in series]
        axes = loss_axes if key.startswith("loss/") else ap_axes if key != "lr" else None
        if axes is not None:
            axes.plot(epochs, values, marker="o", markersize=3, label=key.removeprefix("loss/"))
        if axes is ap_axes:
            top = max([top, *(v for v in values if v is not None)])
    loss_axes.set(title="training losses (mean per epoch)", xlabel="epoch", yscale="log")
    chooser = "validation (val/)" if any("val" in record for record in history) else "test"
    ap_axes.set(
        title=f"COCO AP on the test split; best.pth chosen on {chooser}",
        xlabel="epoch",
        ylim=(0, min(1.0, max(0.05, top * 1.15))),
    )
    best = best_epoch(history)
    if best is not None:
        ap_axes.axvline(best["epoch"], color="grey", linestyle=":", label=f"best (epoch {best['epoch']})")
    for axes in (loss_axes, ap_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.lines:
            axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return figure


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
