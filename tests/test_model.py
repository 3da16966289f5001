import urllib.error

import pytest
import torch
import torchvision.models._api
from conftest import HEAVY_MODELS, coco_state, compact_state, slow_where
from torchvision.models import mobilenet_v2
from torchvision.ops.misc import FrozenBatchNorm2d

import heads
from checkpoint import model_config, model_from_checkpoint, model_from_config
from heads import box_head_width, head_settings, keypoint_head_shape, mask_head_shape, num_classes_of, num_keypoints_of
from model import (
    BOX_MODELS,
    MODELS,
    get_model,
    get_model_instance_segmentation,
    is_keypoint_model,
    is_rcnn,
    learns_masks,
)
from ssd import SSD_SIZES
from utils import UserError, load_checkpoint

SMALL = {"min_size": 64, "max_size": 96}


def _summary(model):
    return (
        [type(m).__name__ for m in model.modules()],
        sorted(n for n, p in model.named_parameters() if p.requires_grad),
        [m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)],
    )


ONE_STAGE_LOSSES = {"retinanet": {"classification", "bbox_regression"}, "ssd": {"classification", "bbox_regression"},
                    "fcos": {"classification", "bbox_regression", "bbox_ctrness"}}  # fmt: skip


@pytest.mark.parametrize("name", slow_where(MODELS, HEAVY_MODELS))
def test_every_model_trains_and_predicts_for_num_classes(name):
    torch.manual_seed(0)
    points = {"num_keypoints": 2} if is_keypoint_model(name) else {}
    sizes = {"min_size": 300} if name == "ssd300_vgg16" else SMALL  # VGG's last layers need 300 pixels
    # an R-CNN's heads run on few RoIs: the keypoint head's eight 512-channel convolutions on torchvision's 512
    # sampled RoIs and 100 detections took 14 s of the one step and prediction, for what this test asserts
    few = {"box_batch_size_per_image": 16, "box_detections_per_img": 5} if is_rcnn(name) else {}
    model = get_model(name, num_classes=3, weights="none", **points, **sizes, **few)
    assert num_classes_of(model) == 3
    if name in SSD_SIZES:  # one square input
        assert (
            model.transform.min_size == (sizes["min_size"],) and model.transform.fixed_size == (sizes["min_size"],) * 2
        )
    else:
        assert model.transform.min_size == (64,) and model.transform.max_size == 96
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())  # from scratch: BatchNorm learns
    assert all(p.requires_grad for p in model.backbone.parameters())
    mask = torch.zeros(1, 70, 90, dtype=torch.uint8)
    mask[0, 10:40, 20:60] = 1
    target = {"boxes": torch.tensor([[20.0, 10.0, 60.0, 40.0]]), "labels": torch.tensor([2])}
    if name.startswith("maskrcnn"):  # only a mask model is fed masks: a box model's data has none
        target["masks"] = mask
    target["keypoints"] = torch.tensor([[[30.0, 20.0, 2.0], [50.0, 30.0, 1.0]]])  # what only Keypoint R-CNN reads
    losses = model([torch.rand(3, 70, 90), torch.rand(3, 70, 90)], [target, target])
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    expected = next((v for k, v in ONE_STAGE_LOSSES.items() if name.startswith(k)), expected)
    if name.startswith("maskrcnn"):
        expected.add("loss_mask")
        assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    if points:
        expected.add("loss_keypoint")
        assert num_keypoints_of(model) == 2
    assert set(losses) == expected
    sum(losses.values()).backward()
    model.eval()
    (output,) = model([torch.rand(3, 70, 90)])
    assert ("masks" in output) == name.startswith("maskrcnn")
    assert ("keypoints" in output) == bool(points) and output.get("keypoints", torch.zeros(0, 2, 3)).shape[1:] == (2, 3)
    assert (output["labels"] < 3).all()
    rebuilt = model_from_config(model_config(model, name))  # no flag, no download
    rebuilt.load_state_dict(model.state_dict())
    assert _summary(rebuilt) == _summary(model) and rebuilt.transform.min_size == model.transform.min_size


ONE_STAGE = [name for name in MODELS if not is_rcnn(name)]


@pytest.mark.parametrize("name", slow_where([*ONE_STAGE, "fasterrcnn_mobilenet_v3_large_320_fpn"], HEAVY_MODELS))
def test_coco_weights_keep_all_but_the_classifier_which_fits_the_user_s_classes(name, fake_hub, weights_file):
    fake_hub["state"] = state = load_checkpoint(coco := weights_file("coco", name))
    from_hub = get_model(name, num_classes=4, weights="DEFAULT")
    from_file = get_model(name, num_classes=4, weights=str(coco))  # offline: torchvision's file
    assert num_classes_of(from_hub) == num_classes_of(from_file) == 4
    for model in (from_hub, from_file):
        loaded = model.state_dict()
        kept = [key for key in state if "num_batches_tracked" not in key]  # FrozenBatchNorm counts no batches
        swapped = [
            key for key in kept if loaded[key].shape != state[key].shape or not torch.equal(loaded[key], state[key])
        ]
        for key in swapped:  # the per-class layers, and nothing else
            assert "cls_logits" in key or "classification_head.module_list" in key or "box_predictor" in key, key
        assert swapped and all(key.endswith(("weight", "bias")) for key in swapped)
    assert _summary(from_file) == _summary(from_hub)  # the stages torchvision's builder freezes, its BatchNorm
    if name == "ssd300_vgg16":  # its builder trains 4 of VGG's 5 stages; the classifiers Xavier-uniform, as its own
        frozen = {key for key, p in from_hub.named_parameters() if not p.requires_grad}
        assert frozen == {f"backbone.features.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")}
        for layer in from_hub.head.classification_head.module_list:
            bound = (6 / (layer.in_channels * 9 + layer.out_channels * 9)) ** 0.5
            assert layer.weight.abs().max() <= bound and abs(layer.weight.std() - bound / 3**0.5) < 0.1 * bound
    if name == "ssdlite320_mobilenet_v3_large":  # all 6 stages train; the classifiers normal of std 0.03
        assert all(p.requires_grad for p in from_hub.parameters())
        for layer in from_hub.head.classification_head.module_list:
            assert abs(layer[-1].weight.std() - 0.03) < 0.003
    if name == "retinanet_resnet50_fpn":  # its original COCO weights want FrozenBatchNorm eps 0, as R-CNN's do
        assert model_config(from_file, name)["frozen_bn_eps"] == 0.0
    if name in SSD_SIZES:
        assert from_hub.transform.fixed_size == (SSD_SIZES[name],) * 2


def test_r_cnn_head_settings_are_refused_for_one_stage_models():
    with pytest.raises(UserError, match="--rpn-pre-nms-top-n-train: an R-CNN setting; --model retinanet_resnet50_fpn"):
        get_model("retinanet_resnet50_fpn", weights="none", rpn_pre_nms_top_n_train=100)


@pytest.mark.parametrize(
    "name", ["maskrcnn_resnet50_fpn", "maskrcnn_mobilenet_v3_large_fpn", "maskrcnn_resnet50_fpn_v2"]
)
def test_local_weights_file_builds_what_torchvision_builds(name, fake_hub, weights_file):
    fake_hub["state"] = state = load_checkpoint(coco := weights_file("coco", name))
    from_hub = get_model(name, num_classes=2, weights="DEFAULT")
    assert fake_hub["url"].startswith("https://download.pytorch.org/models/")
    from_file = get_model(name, num_classes=2, weights=str(coco))
    assert _summary(from_file) == _summary(from_hub)
    loaded = from_file.state_dict()
    for key, value in state.items():
        if "predictor" not in key and "num_batches_tracked" not in key:
            assert torch.equal(loaded[key], value), key
    assert from_file.roi_heads.box_predictor.cls_score.out_features == 2
    if name == "maskrcnn_resnet50_fpn":  # torchvision's original COCO weights want FrozenBatchNorm eps 0
        assert model_config(from_file, name)["frozen_bn_eps"] == 0.0
    first_stage = next(iter(from_file.backbone.body.children()))
    assert not any(p.requires_grad for p in first_stage.parameters())


@pytest.mark.slow
def test_keypoint_rcnn_loads_coco_weights_and_predicts_the_users_keypoints(fake_hub, weights_file):
    name = "keypointrcnn_resnet50_fpn"
    fake_hub["state"] = state = load_checkpoint(coco := weights_file("coco", name))  # COCO's: 2 classes, 17 keypoints
    from_hub = get_model(name, num_classes=3, weights="DEFAULT", num_keypoints=4)
    assert "keypointrcnn_resnet50_fpn_coco" in fake_hub["url"]
    from_file = get_model(name, num_classes=3, weights=str(coco), num_keypoints=4)
    assert _summary(from_file) == _summary(from_hub)
    for key, value in state.items():
        if "predictor" not in key and "num_batches_tracked" not in key:
            assert torch.equal(from_file.state_dict()[key], value), key
    assert num_keypoints_of(from_file) == 4 and from_file.roi_heads.box_predictor.cls_score.out_features == 3
    assert model_config(from_file, name)["frozen_bn_eps"] == 0.0  # as torchvision builds it for COCO_V1
    rebuilt = model_from_config(model_config(from_file, name))
    rebuilt.load_state_dict(from_file.state_dict())
    assert _summary(rebuilt) == _summary(from_file)
    with pytest.raises(UserError, match="learns keypoints: train it on a COCO keypoints json"):
        get_model(name, num_classes=2, weights="none")
    with pytest.raises(UserError, match="has no keypoint head"):
        get_model("maskrcnn_resnet50_fpn", num_classes=2, weights="none", num_keypoints=3)


def test_tutorial_function_is_coco_mask_rcnn_with_new_heads(fake_hub):
    fake_hub["state"] = coco_state("maskrcnn_resnet50_fpn")
    model = get_model_instance_segmentation(2)
    assert "maskrcnn_resnet50_fpn_coco" in fake_hub["url"]
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 2
    assert model.roi_heads.mask_predictor.conv5_mask.out_channels == 256


def test_no_network_names_both_offline_alternatives(monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", unreachable)
    with pytest.raises(UserError, match="could not download.*--weights none.*--weights PATH") as error:
        get_model("maskrcnn_resnet50_fpn", 2)
    assert "\n" not in str(error.value)


def test_checkpoint_of_train_py_as_weights(tmp_path):
    torch.manual_seed(0)
    trained = get_model("maskrcnn_mobilenet_v3_large_fpn", num_classes=4, weights="none", **SMALL)
    config = model_config(trained, "maskrcnn_mobilenet_v3_large_fpn")
    torch.save({"model": compact_state(trained), "model_config": config, "epoch": 3}, tmp_path / "checkpoint.pth")
    same = get_model("maskrcnn_mobilenet_v3_large_fpn", num_classes=4, weights=str(tmp_path / "checkpoint.pth"))
    for key, value in trained.state_dict().items():
        if "num_batches_tracked" not in key:
            assert torch.equal(same.state_dict()[key], value), key
    other = get_model("maskrcnn_mobilenet_v3_large_fpn", num_classes=6, weights=str(tmp_path / "checkpoint.pth"))
    assert other.roi_heads.box_predictor.cls_score.out_features == 6
    assert torch.equal(other.state_dict()["rpn.head.conv.0.0.weight"], trained.state_dict()["rpn.head.conv.0.0.weight"])
    with pytest.raises(UserError, match="does not fit --model maskrcnn_resnet50_fpn"):
        get_model("maskrcnn_resnet50_fpn", num_classes=4, weights=str(tmp_path / "checkpoint.pth"))


def test_flag_mistakes_are_user_errors(tmp_path, weights_file):
    with pytest.raises(UserError, match="--weights-backbone needs --weights none"):
        get_model("maskrcnn_resnet50_fpn", 2, weights="DEFAULT", weights_backbone="DEFAULT")
    with pytest.raises(UserError, match="--weights COCO_V7: not a file and not one of DEFAULT, COCO_V1"):
        get_model("maskrcnn_resnet50_fpn", 2, weights="COCO_V7")
    with pytest.raises(UserError, match="no such file"):
        get_model("maskrcnn_resnet50_fpn", 2, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="--model yolo: unknown"):
        get_model("yolo", 2)
    with pytest.raises(UserError, match="imagenet_resnet50.pth: not weights of a detection model"):
        get_model("maskrcnn_resnet50_fpn", 2, weights=str(weights_file("imagenet", "resnet50")))
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(UserError, match="notes.pth: refused to load"):
        get_model("maskrcnn_resnet50_fpn", 2, weights=str(tmp_path / "notes.pth"))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _saved_and_rebuilt(model, name, path):
    """`model` saved at `path` as train.py's best.pth and rebuilt from it with no flag, the two predicting alike; the
    rebuilt model and the config."""
    config = {**model_config(model, name), "class_names": ["background", "a", "b"]}
    torch.save({"model": compact_state(model), "model_config": config}, path)
    rebuilt, _ = model_from_checkpoint(path)
    model.eval(), rebuilt.eval()
    image = torch.rand(3, 90, 110)
    with torch.inference_mode():
        expected, got = model([image])[0], rebuilt([image])[0]
    assert len(expected["boxes"]) > 0 and all(torch.equal(expected[k], got[k]) for k in expected)  # detections alike
    return rebuilt, config


def test_head_settings_a_light_mask_head_and_a_narrow_fpn_are_built_and_rebuilt(tmp_path):
    settings = {
        "box_batch_size_per_image": 128, "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 250, "box_detections_per_img": 40,
    }  # fmt: skip
    torch.manual_seed(0)
    model = get_model("maskrcnn_resnet18_fpn", 3, weights="none", mask_head=(2, 128), fpn_channels=96, **settings,
                      **SMALL)  # fmt: skip
    assert head_settings(model) == settings and mask_head_shape(model) == (2, 128)
    widths = {m.out_channels for m in model.backbone.fpn.modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths == {96} and model.rpn.head.conv[0][0].in_channels == 96  # every level, and what reads them
    assert model.roi_heads.mask_head[0][0].in_channels == 96 and model.roi_heads.box_head.fc6.in_features == 96 * 49
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    default = get_model("maskrcnn_resnet18_fpn", 3, weights="none", **SMALL)
    assert mask_head_shape(default) == (4, 256) and head_settings(default)["box_batch_size_per_image"] == 512
    assert (
        default.backbone.out_channels == 256 and model_config(default, "maskrcnn_resnet18_fpn")["fpn_channels"] == 256
    )
    light = sum(p.numel() for p in model.roi_heads.mask_head.parameters())
    assert light < sum(p.numel() for p in default.roi_heads.mask_head.parameters()) / 5  # 0.44 M against 2.36 M

    rebuilt, _ = _saved_and_rebuilt(model, "maskrcnn_resnet18_fpn", tmp_path / "best.pth")
    assert head_settings(rebuilt) == settings and mask_head_shape(rebuilt) == (2, 128)
    assert rebuilt.backbone.out_channels == 96


def test_our_mobilenet_mask_rcnn_takes_a_narrow_pyramid_from_scratch_only(tmp_path):
    torch.manual_seed(0)
    model = get_model("maskrcnn_mobilenet_v3_large_fpn", 3, weights="none", fpn_channels=32, **SMALL)
    widths = {m.out_channels for m in model.backbone.fpn.modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths == {32} and model.rpn.head.conv[0][0].in_channels == 32
    assert model.roi_heads.box_head.fc6.in_features == 32 * 49 and model.roi_heads.mask_head[0][0].in_channels == 32
    _, config = _saved_and_rebuilt(model, "maskrcnn_mobilenet_v3_large_fpn", tmp_path / "best.pth")
    assert config["fpn_channels"] == 32
    with pytest.raises(UserError, match="^--fpn-channels 32: --weights DEFAULT has a pyramid 256 wide; drop"):
        get_model("maskrcnn_mobilenet_v3_large_fpn", 3, fpn_channels=32, **SMALL)  # before any download


def test_a_narrow_box_head_rebuilds_from_its_checkpoint_and_a_narrowed_run_fine_tunes_with_no_width_flag(tmp_path):
    torch.manual_seed(0)
    model = get_model("maskrcnn_resnet18_fpn", 3, weights="none", mask_head=(2, 128), fpn_channels=32, box_head=64,
                      **SMALL)  # fmt: skip
    fc6, fc7 = model.roi_heads.box_head.fc6, model.roi_heads.box_head.fc7
    assert (fc6.in_features, fc6.out_features, fc7.out_features) == (32 * 49, 64, 64) and box_head_width(model) == 64
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 3 * 4
    assert box_head_width(get_model("maskrcnn_resnet18_fpn", 3, weights="none", **SMALL)) == 1024  # torchvision's
    v2 = get_model("fasterrcnn_resnet50_fpn_v2", 3, weights="none", box_head=64, **SMALL)  # 4 convolutions, 1 layer
    assert sum(isinstance(m, torch.nn.Conv2d) for m in v2.roi_heads.box_head.modules()) == 4
    assert [m.out_features for m in v2.roi_heads.box_head.modules() if isinstance(m, torch.nn.Linear)] == [64]

    _, config = _saved_and_rebuilt(model, "maskrcnn_resnet18_fpn", tmp_path / "best.pth")
    assert config["box_head"] == 64
    # --weights best.pth of a narrowed run (a cpu-12min run's): its pyramid and heads come from the file, and only
    # the predictors are new, for the new classes (before, such a file "did not fit" whatever the flags)
    tuned = get_model("maskrcnn_resnet18_fpn", 2, weights=str(tmp_path / "best.pth"), **SMALL)
    assert (tuned.backbone.out_channels, mask_head_shape(tuned), box_head_width(tuned)) == (32, (2, 128), 64)
    assert torch.equal(tuned.roi_heads.box_head.fc6.weight, fc6.weight)
    assert torch.equal(tuned.roi_heads.mask_head[0][0].weight, model.roi_heads.mask_head[0][0].weight)
    assert tuned.roi_heads.box_predictor.cls_score.out_features == 2
    wider = get_model("maskrcnn_resnet18_fpn", 2, weights=str(tmp_path / "best.pth"), box_head=128, **SMALL)
    assert box_head_width(wider) == 128 and torch.equal(
        wider.roi_heads.mask_head[0][0].weight, model.roi_heads.mask_head[0][0].weight
    )
    with pytest.raises(UserError, match="^--box-head 64: an R-CNN setting; --model retinanet_resnet50_fpn has no box"):
        get_model("retinanet_resnet50_fpn", 3, weights="none", box_head=64, **SMALL)
    with pytest.raises(UserError, match="^--box-head 0: give a width of 1 or more"):
        get_model("fasterrcnn_resnet18_fpn", 3, weights="none", box_head=0, **SMALL)


def _rpn_convolutions(model):
    return [(m.in_channels, m.out_channels) for m in model.rpn.head.conv.modules() if isinstance(m, torch.nn.Conv2d)]


def test_a_narrow_rpn_head_reads_the_maps_trains_rebuilds_and_fine_tunes_with_no_width_flag(tmp_path):
    # the tutorial's MobileNetV2: torchvision's head keeps the map's 1280 channels; narrowed, it reads them and
    # gives 256, its 15 anchors a position kept
    tutorial = get_model("fasterrcnn_mobilenet_v2", 3, weights="none", box_head=32, **SMALL)
    assert _rpn_convolutions(tutorial) == [(1280, 1280)] and heads.rpn_head_width(tutorial) == 1280
    narrow = get_model("fasterrcnn_mobilenet_v2", 3, weights="none", box_head=32, rpn_head=256, **SMALL)
    assert _rpn_convolutions(narrow) == [(1280, 256)] and heads.rpn_head_width(narrow) == 256
    head = narrow.rpn.head
    assert (head.cls_logits.out_channels, head.bbox_pred.out_channels) == (15, 60)
    assert head.conv[0][0].weight.std() < 0.02 and not head.conv[0][0].bias.any()  # RPNHead's own initialisation
    v2 = get_model("fasterrcnn_resnet50_fpn_v2", 3, weights="none", rpn_head=64, **SMALL)  # its two convolutions
    assert _rpn_convolutions(v2) == [(256, 64), (64, 64)]

    torch.manual_seed(0)
    model = get_model("fasterrcnn_resnet18_fpn", 3, weights="none", fpn_channels=32, box_head=32, rpn_head=16,
                      **SMALL)  # fmt: skip
    assert _rpn_convolutions(model) == [(32, 16)]
    target = {"boxes": torch.tensor([[20.0, 10.0, 60.0, 40.0]]), "labels": torch.tensor([2])}
    losses = model([torch.rand(3, 70, 90)], [target])
    sum(losses.values()).backward()  # the RPN's losses reach the new convolution
    assert losses["loss_objectness"] > 0 and model.rpn.head.conv[0][0].weight.grad.abs().sum() > 0
    _, config = _saved_and_rebuilt(model, "fasterrcnn_resnet18_fpn", tmp_path / "best.pth")
    assert config["rpn_head"] == 16
    tuned = get_model("fasterrcnn_resnet18_fpn", 2, weights=str(tmp_path / "best.pth"), **SMALL)  # the file's width
    assert heads.rpn_head_width(tuned) == 16 and torch.equal(
        tuned.rpn.head.conv[0][0].weight, model.rpn.head.conv[0][0].weight
    )
    with pytest.raises(UserError, match="^--rpn-head 64: an R-CNN setting; --model fcos_resnet50_fpn has no RPN$"):
        get_model("fcos_resnet50_fpn", 3, weights="none", rpn_head=64, **SMALL)
    with pytest.raises(UserError, match="^--rpn-head 0: give a width of 1 or more"):
        get_model("fasterrcnn_resnet18_fpn", 3, weights="none", rpn_head=0, **SMALL)


@pytest.mark.slow
def test_a_light_keypoint_head_rebuilds_from_its_checkpoint_and_fine_tunes_with_no_flag(tmp_path):
    torch.manual_seed(0)
    name = "keypointrcnn_resnet50_fpn"
    assert keypoint_head_shape(get_model(name, 2, weights="none", num_keypoints=3, **SMALL)) == (
        8,
        512,
    )  # torchvision's
    model = get_model(name, 3, weights="none", num_keypoints=3, keypoint_head=(2, 64), box_head=32, **SMALL)
    convs = [layer for layer in model.roi_heads.keypoint_head if isinstance(layer, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(256, 64), (64, 64)] and keypoint_head_shape(model) == (
        2,
        64,
    )
    predictor = model.roi_heads.keypoint_predictor.kps_score_lowres
    assert (predictor.in_channels, predictor.out_channels) == (64, 3)
    model.eval()
    with torch.inference_mode():
        (found,) = model([torch.rand(3, 90, 120)])
    assert found["keypoints"].shape[1:] == (3, 3)

    _, config = _saved_and_rebuilt(model, name, tmp_path / "best.pth")
    assert config["keypoint_head"] == (2, 64)
    tuned = get_model(name, 2, weights=str(tmp_path / "best.pth"), num_keypoints=5, **SMALL)  # new classes, points
    assert keypoint_head_shape(tuned) == (2, 64) and num_keypoints_of(tuned) == 5
    assert torch.equal(tuned.roi_heads.keypoint_head[0].weight, convs[0].weight)
    with pytest.raises(UserError, match="^--keypoint-head: a Keypoint R-CNN setting; --model maskrcnn_resnet18_fpn"):
        get_model("maskrcnn_resnet18_fpn", 3, weights="none", keypoint_head=(2, 64), **SMALL)
    with pytest.raises(UserError, match="^--keypoint-head 2 0: give 1 or more of each"):
        get_model(name, 2, weights="none", num_keypoints=3, keypoint_head=(2, 0), **SMALL)


def test_a_pyramid_width_is_refused_where_torchvision_fixes_it():
    with pytest.raises(UserError, match="--fpn-channels: torchvision's builder of fasterrcnn_resnet50_fpn fixes"):
        get_model("fasterrcnn_resnet50_fpn", 3, weights="none", fpn_channels=128, **SMALL)
    with pytest.raises(UserError, match="--fpn-channels 0: give a width of 1 or more"):
        get_model("fasterrcnn_resnet18_fpn", 3, weights="none", fpn_channels=0, **SMALL)


def test_resnet18_has_no_coco_weights_but_takes_imagenet_ones(weights_file):
    with pytest.raises(UserError, match="--weights DEFAULT: torchvision has no COCO weights for this model"):
        get_model("maskrcnn_resnet18_fpn", 2)
    imagenet = weights_file("imagenet", "resnet18")
    model = get_model("maskrcnn_resnet18_fpn", 2, weights="none", weights_backbone=str(imagenet))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules())
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())  # 3 stages train


def test_resnet18_for_boxes_is_the_mask_model_without_its_mask_head(tmp_path):
    torch.manual_seed(0)
    boxes = get_model("fasterrcnn_resnet18_fpn", 3, weights="none", box_batch_size_per_image=128, **SMALL)
    masks = get_model("maskrcnn_resnet18_fpn", 3, weights="none", **SMALL)
    assert "fasterrcnn_resnet18_fpn" in BOX_MODELS and not learns_masks("fasterrcnn_resnet18_fpn")
    assert mask_head_shape(boxes) is None and head_settings(boxes)["box_batch_size_per_image"] == 128
    mask_keys = {k for k in masks.state_dict() if k.startswith("roi_heads.mask_")}
    assert mask_keys and set(boxes.state_dict()) == set(masks.state_dict()) - mask_keys
    boxes.train()
    target = {"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([2])}
    losses = boxes([torch.rand(3, 80, 90)], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}

    config = {**model_config(boxes, "fasterrcnn_resnet18_fpn"), "class_names": ["background", "a", "b"]}
    torch.save({"model": compact_state(boxes), "model_config": config}, tmp_path / "best.pth")
    rebuilt, _ = model_from_checkpoint(tmp_path / "best.pth")
    assert mask_head_shape(rebuilt) is None and head_settings(rebuilt) == head_settings(boxes)


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v2", "maskrcnn_mobilenet_v2"])
def test_the_tutorials_own_backbone_is_built_the_tutorials_way(name, fake_hub):
    model = get_model(name, num_classes=3, weights="none", **SMALL)
    assert isinstance(model.backbone, torch.nn.Sequential) and model.backbone.out_channels == 1280  # .features
    assert len(model.backbone) == len(mobilenet_v2().features)
    anchors = model.rpn.anchor_generator
    assert anchors.sizes == ((32, 64, 128, 256, 512),) and anchors.aspect_ratios == ((0.5, 1.0, 2.0),)
    assert model.rpn.head.cls_logits.out_channels == 15  # 5 sizes x 3 ratios at each position of one map
    assert model.roi_heads.box_roi_pool.featmap_names == ["0"] and model.roi_heads.box_roi_pool.output_size == (7, 7)
    if name.startswith("maskrcnn"):
        assert model.roi_heads.mask_roi_pool.output_size == (14, 14)
    else:
        assert getattr(model.roi_heads, "mask_predictor", None) is None
    with pytest.raises(UserError, match="--weights DEFAULT: torchvision has no COCO weights for this model"):
        get_model(name, 3)
    torch.manual_seed(2)
    fake_hub["state"] = mobilenet_v2().state_dict()  # ImageNet-shaped, as torchvision serves it
    pretrained = get_model(name, num_classes=3, weights="none", weights_backbone="DEFAULT", **SMALL)
    assert "mobilenet_v2" in fake_hub["url"]
    served = fake_hub["state"]["features.18.0.weight"]
    assert torch.equal(pretrained.backbone[18][0].weight, served)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in pretrained.backbone.modules())
    assert not any(p.requires_grad for p in pretrained.backbone[1].parameters())  # the first stages stay
    assert all(p.requires_grad for p in pretrained.backbone[18].parameters())  # the last 3 train


@pytest.mark.slow
@pytest.mark.parametrize("side", [268, 300, 512])
def test_ssd300_spaces_its_default_boxes_over_the_input_it_is_given(side):
    model = get_model("ssd300_vgg16", 3, weights="none", min_size=side)
    model.eval()
    images, _ = model.transform([torch.rand(3, 200, 240)])
    assert images.tensors.shape[-2:] == (side, side)
    with torch.no_grad():
        features = list(model.backbone(images.tensors).values())
        boxes = model.anchor_generator(images, features)[0]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    # none outside (torchvision's own steps at 300 overhang by 4 pixels; 300's steps at 512 put boxes at 1050)
    assert centres.min() > 0 and centres.max() <= side + 4
    coarsest = features[-1].shape[-1] ** 2 * model.anchor_generator.num_anchors_per_location()[-1]
    middle = centres[-coarsest:].mean(dim=0)  # the coarsest map's boxes are centred on the image, whatever the side
    assert torch.allclose(middle, torch.full_like(middle, side / 2))
