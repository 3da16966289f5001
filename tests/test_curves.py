import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator  # requirements-dev.txt has tensorboard

from curves import TensorBoardLogger, curves_figure, plot_curves, scalars


def _record(epoch, masks=True):
    record = {
        "epoch": epoch,
        "lr": 0.01 / (epoch + 1),
        "loss": 2.0 - epoch,
        "loss_classifier": 0.5,
        "loss_box_reg": 0.3,
    }
    record["bbox"] = [0.1 * epoch, 0.2 * epoch] + [0.0] * 10
    if masks:
        record["segm"] = [0.05 * epoch, 0.15 * epoch] + [0.0] * 10
    return record


def test_scalars_are_losses_ap_and_lr():
    values = scalars(_record(2))
    assert values == {
        "loss/loss": 0.0, "loss/loss_classifier": 0.5, "loss/loss_box_reg": 0.3,
        "bbox/AP": 0.2, "bbox/AP50": 0.4, "segm/AP": 0.1, "segm/AP50": 0.3, "lr": 0.01 / 3,
    }  # fmt: skip
    assert "segm/AP" not in scalars(_record(2, masks=False))  # Faster R-CNN: boxes only
    # Keypoint R-CNN: its own loss and keypoint AP (which chooses best.pth); RetinaNet: its own loss names;
    # --val-size: the validation AP that chooses best.pth
    keypoints = {**_record(1, masks=False), "loss_keypoint": 4.0, "keypoints": [0.3, 0.6] + [0.0] * 8}
    keypoints.update(val={"bbox": [0.2] * 12, "keypoints": [0.25, 0.5] + [0.0] * 8}, train_seconds=3.0)
    values = scalars(keypoints)
    assert values["loss/loss_keypoint"] == 4.0 and values["keypoints/AP"] == 0.3 and values["keypoints/AP50"] == 0.6
    assert values["val/keypoints/AP"] == 0.25 and values["val/bbox/AP50"] == 0.2
    assert "loss/train_seconds" not in values and "loss/epoch" not in values
    assert "loss/bbox_regression" in scalars({**_record(0), "bbox_regression": 0.7, "classification": 0.2})


def test_the_ap_axis_fits_the_data_epochs_are_whole_and_legends_hide_no_line():
    history = [{**_record(e), "segm": [0.01 * e, 0.03 * e] + [0.0] * 10, "bbox": [0.02 * e] * 12} for e in range(7)]
    figure = curves_figure(history)
    figure.canvas.draw()
    loss_axes, ap_axes = figure.axes
    assert 0.18 <= ap_axes.get_ylim()[1] <= 0.25  # the largest AP is 0.18 (mask AP50 at epoch 6), not a 0..1 axis
    for axes in (loss_axes, ap_axes):
        ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        legend, plot_area = axes.get_legend().get_window_extent(), axes.get_window_extent()
        assert legend.x0 >= plot_area.x1  # beside the axes, not over the lines
    assert curves_figure([_record(0)]).axes[1].get_ylim()[1] == pytest.approx(0.05)  # all zeros: a small axis


@pytest.mark.parametrize("masks", [True, False])
def test_curves_png_is_drawn_for_any_number_of_epochs(masks, tmp_path):
    for epochs in (1, 3):
        history = [_record(e, masks) for e in range(epochs)]
        plot_curves(history, tmp_path / "curves.png")
        with Image.open(tmp_path / "curves.png") as image:
            assert image.format == "PNG" and image.size == (1200, 400)
            pixels = np.asarray(image.convert("L"))
        assert (pixels < 128).mean() > 0.001  # lines and text, not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # written atomically, no temporary left


def test_tensorboard_logs_each_epoch_once_across_a_resume(tmp_path):
    logger = TensorBoardLogger(tmp_path, start_epoch=0)
    for epoch in range(3):
        logger.log(_record(epoch))
    logger.close()
    resumed = TensorBoardLogger(tmp_path, start_epoch=2)  # the run died in epoch 2 and resumes there
    resumed.log({**_record(2), "loss": 9.0})
    resumed.log(_record(3))
    resumed.close()
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss/loss")]
    assert losses == [(0, 2.0), (1, 1.0), (2, 9.0), (3, -1.0)]
    assert [e.step for e in events.Scalars("segm/AP")] == [0, 1, 2, 3]
