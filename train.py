"""Fine-tune a torchvision detection or instance-segmentation model: the command line.

    python train.py --data-path PennFudanPed --download --epochs 10
    torchrun --nproc_per_node=2 train.py --data-path PennFudanPed --epochs 10   # DDP: GPUs, or CPU processes

This file only wires the other modules together; flags.py holds the flags, and docs/flags.md explains each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

import distributed
import run_folder
import utils
from anchors import sizes_for_data
from budget import PLANS, OutOfTime, TimeBudget, stretched_steps
from checkpoint import (
    COMMANDS,
    OVERRIDABLE,
    checkpoint_size,
    flag,
    get_rng_state,
    model_config,
    model_from_config,
    restore_training,
    save_epoch,
    settings_of_run,
    stored_split,
)
from coco_eval import IOU_TYPES, ap_line, has_ground_truth, print_summary, selection_score, write_results
from curves import TensorBoardLogger, plot_curves
from ema import ModelEMA
from engine import amp_pays, evaluate, train_one_epoch
from errors import save_error_pictures
from flags import apply_recipe, check_args, get_args_parser, parse_args, tiling_of
from heads import HEAD_SETTINGS
from keypoints import keypoint_sigmas
from loaders import make_loaders
from model import BUILDER_SIZES, get_model, is_keypoint_model, resizes_in_data
from mosaic import Mosaic, close_mosaic
from recipe import make_optimizer, make_scheduler, retarget_scheduler, set_base_lr
from split import sample_names
from ssd import SSD_SIZES
from tiles import VIEW_SETTINGS
from transforms import train_sizes
from visualize import save_batch_picture, save_predictions_picture

# What --use-deterministic-algorithms sets in the environment for the run (a value the user set stays)
DETERMINISTIC_ENV = {
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # cuBLAS needs it to be deterministic
    "MKL_CBWR": "AUTO,STRICT",  # MKL's results otherwise depend on memory alignment
}


def build_model(
    args: argparse.Namespace,
    classes: list[str],
    checkpoint: dict[str, Any] | None,
    device: torch.device,
    num_keypoints: int | None = None,
) -> torch.nn.Module:
    """The model of --model with --weights, or for a resume the checkpoint's own (nothing is downloaded)."""
    sizes = {"min_size": train_sizes(args.augmentation, args.min_size, args.scale_range), "max_size": args.max_size}
    if checkpoint is None:
        model = get_model(
            args.model,
            num_classes=len(classes),
            num_keypoints=num_keypoints,
            weights=args.weights,
            weights_backbone=args.weights_backbone,
            trainable_backbone_layers=args.trainable_backbone_layers,
            mask_head=args.mask_head,
            box_head=args.box_head,
            rpn_head=args.rpn_head,
            keypoint_head=args.keypoint_head,
            fpn_channels=args.fpn_channels,
            anchor_sizes=args.anchor_sizes,
            **{name: getattr(args, name) for name in HEAD_SETTINGS},
            **sizes,
        )
    else:
        config = checkpoint["model_config"]
        if config.get("class_names", classes) != classes:
            raise utils.UserError(
                f"--resume {args.resume}: its classes {config['class_names'][1:]} differ from the dataset's "
                f"{classes[1:]}; to fine-tune it for these, start a new run with --weights {args.resume}"
            )
        model = model_from_config(config, **sizes)
        try:
            model.load_state_dict(checkpoint["model"])
        except (KeyError, RuntimeError) as error:
            raise utils.UserError(f"--resume {args.resume}: its weights do not fit its own model_config") from error
    # The training transform resized the images (transforms.ResizeForModel); torchvision's own switch, which its
    # references set for lsj, makes the model skip its resize in training only.
    model.transform._skip_resize = resizes_in_data(args.model)
    # torchvision's keypoint loss views its logits as if contiguous: Keypoint R-CNN keeps the default layout
    channels_last = args.channels_last and not is_keypoint_model(args.model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


def plan_epochs(
    args: argparse.Namespace,
    budget: TimeBudget,
    done: int,
    epoch_seconds: float,
    optimizer: torch.optim.Optimizer,
    output_dir: Path,
    first: bool,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """--time-budget, after an epoch (training, evaluation, saves: `epoch_seconds`, or their mean): set --epochs to
    what fits, and return the schedule stretched over them, at the point it reaches after the `done` epochs. The
    `first` plans (budget.PLANS) also move step decays in proportion; a later one changes only the epochs (and a
    cosine's length, so no decay already taken is undone), and returns None where the plan stands."""
    nominal = args.epochs
    epochs = distributed.broadcast_object(budget.epochs(done, epoch_seconds))  # rank 0's clock decides for all
    if not first and epochs == nominal:
        return None
    args.epochs = epochs
    if first:
        args.lr_step_size, args.lr_steps = stretched_steps(nominal, epochs, args.lr_step_size, args.lr_steps)
    for group in optimizer.param_groups:  # the schedule as if planned for `epochs` from the start
        group["lr"] = group["initial_lr"]
    lr_scheduler = make_scheduler(optimizer, args.lr_scheduler, epochs, args.lr_step_size, args.lr_steps,
                                  args.lr_gamma)  # fmt: skip
    for _ in range(done):
        lr_scheduler.step()
    planned = f"{epochs} epoch{'s' if epochs != 1 else ''} in all"
    print(f"--time-budget {args.time_budget:g} min: an epoch takes {epoch_seconds:.0f} s, so {planned} "
          f"({budget.spent() / 60:.1f} min spent)")  # fmt: skip
    if distributed.is_main_process():
        args_json = output_dir / "args.json"
        utils.write_json({**json.loads(args_json.read_text()), **vars(args)}, args_json)
    return lr_scheduler


def main(args: argparse.Namespace, given: set[str] | None = None) -> dict[str, Any] | None:
    """Train (or with --test-only evaluate) as `args` say; `given`: the flags typed (see parse_args)."""
    checkpoint, changes = None, []
    defaults = vars(get_args_parser().parse_args([]))
    if given is None:  # main called with a namespace alone: every flag whose value is not its default
        given = {name for name, value in vars(args).items() if value != defaults.get(name)}
    if not args.resume:
        apply_recipe(args, given)
    else:
        checkpoint = utils.load_checkpoint(args.resume)
        values = {name: getattr(args, name) for name in given}
        commands = {name: getattr(args, name) for name in COMMANDS}  # what to do this time, not what the run is
        settings, changes = settings_of_run(
            checkpoint, args.resume, defaults, values, args.test_only, args.allow_changes
        )
        args = argparse.Namespace(**{**settings, **commands})
        if "epochs" in given and "time_budget" not in given:  # a typed --epochs ends the run's time budget
            args.time_budget = None
    if args.model in BUILDER_SIZES and not args.resume:  # sizes its builder sets: those not typed nor a recipe's
        chosen = given | set(args.recipe_settings or {})
        own_min, own_max = BUILDER_SIZES[args.model]
        args.min_size = args.min_size if "min_size" in chosen else own_min
        args.max_size = args.max_size if "max_size" in chosen else own_max
        if args.model in SSD_SIZES:  # one square input
            args.max_size = args.min_size
    check_args(args)
    # The output folder, before any work: held by this run (rank 0) for its lifetime, and never an earlier run's.
    lock = run_folder.hold(args.output_dir) if distributed.launched_rank() == 0 else None
    # --use-deterministic-algorithms is this run's: a notebook's next call finds torch and the environment as they were
    determinism = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    environment = {name: os.environ.get(name) for name in DETERMINISTIC_ENV}
    try:
        earlier = distributed.launched_rank() == 0 and not args.test_only
        earlier = earlier and run_folder.refuse_earlier_run(args.output_dir, args.resume, args.overwrite)
        return run(args, checkpoint, changes, earlier)
    finally:
        torch.use_deterministic_algorithms(determinism[0], warn_only=determinism[1])
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if lock is not None:
            lock.close()


def run(args: argparse.Namespace, checkpoint: dict[str, Any] | None, changes: list[dict], earlier: bool) -> Any:
    """main() once the settings are known and the output folder is held: train, or evaluate with --test-only.

    `checkpoint`: the resumed one, if any; `changes`: what the flags changed of it; `earlier`: an
    earlier run's files in the output folder are to be removed (--overwrite) before anything is written.
    """
    if args.use_deterministic_algorithms:
        for name, value in DETERMINISTIC_ENV.items():
            os.environ.setdefault(name, value)
        torch.use_deterministic_algorithms(True)
    device = distributed.init_distributed(args.device)
    utils.seed_everything(args.seed + distributed.get_rank())  # ranks augment differently; DDP copies rank 0's init
    output_dir = Path(args.output_dir)

    run_split = None
    if checkpoint is not None:
        run_split = stored_split(checkpoint, args.resume)
        if run_split is None:
            print(f"note: {args.resume} holds no split; splitting with --seed and --test-size as the run did")
    train_loader, val_loader, test_loader, classes, split = make_loaders(args, device, run_split)
    data = test_loader.dataset.dataset
    names = data.keypoint_names  # of the keypoints a keypoint model learns; none for other models
    sigmas = keypoint_sigmas(names, args.keypoint_sigmas) if names else None
    detections = args.box_detections_per_img or 100  # each image's best that count: COCO's 100, or the model's
    tiling = tiling_of(args, names, args.keypoint_flip_map, detections)  # --tile, --tta: how evaluation sees a photo
    scoring = {"keypoint_sigmas": sigmas, "tiling": tiling, "max_detections": detections}
    if args.anchor_sizes == ["auto"]:  # a new run's (a resume's checkpoint holds the sizes it chose)
        training = train_loader.dataset
        args.anchor_sizes = sizes_for_data(training.dataset, list(training.indices), args.min_size, args.max_size)
    model = build_model(args, classes, checkpoint, device, len(names) if names else None)

    if args.test_only:
        results: dict[str, list[dict]] = {}
        errors: dict[str, Any] = {}  # the confusion matrix and precision-recall curves (errors.py)
        stats = evaluate(model, test_loader, device, classes, results=results, errors=errors, **scoring)
        if distributed.is_main_process():
            files = sample_names(data, list(range(len(data))))
            written = write_results(results, output_dir, data.image_ids, data.category_ids, files)
            written += save_error_pictures(errors, output_dir) if errors else []
            # eval.json is the stats, and what --allow-changes changed in the evaluation (sizes, data), if anything
            changed = [c for c in changes if c["flag"] not in map(flag, OVERRIDABLE)]
            seen = {"views": {name: getattr(args, name) for name in VIEW_SETTINGS}} if tiling else {}
            evaluated = {**stats, **seen, "errors": errors, **({"changes": changed} if changed else {})}
            utils.write_json(evaluated, output_dir / "eval.json")
            scored = ap_line(stats) if has_ground_truth(stats) else "nothing to score (no ground truth)"
            print(f"{scored} on the run's {len(split['test'])} test images of epoch {checkpoint.get('epoch')}; "
                  f"wrote {output_dir / 'eval.json'}, {', '.join(written)}")  # fmt: skip
        distributed.cleanup_distributed()
        return stats

    model_without_ddp = model  # what is saved, evaluated and resumed
    if distributed.is_distributed():
        if args.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model_without_ddp = model
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    optimizer = make_optimizer(model, args.opt, args.lr, args.momentum, args.weight_decay, args.norm_weight_decay)
    schedule = (args.epochs, args.lr_step_size, args.lr_steps, args.lr_gamma)
    lr_scheduler = make_scheduler(optimizer, args.lr_scheduler, *schedule)
    amp = args.amp and amp_pays(device)
    if args.amp and not amp:
        print("note: --amp: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so mixed precision would "
              "be slower than float32 here; training in float32")  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda") if amp else None

    ema = ModelEMA(model_without_ddp, args.model_ema_decay) if args.model_ema else None
    evaluated = model_without_ddp if ema is None else ema.module  # evaluated each epoch, and saved as "model"
    start_epoch, best_score, history, all_changes = 0, -math.inf, [], []
    if checkpoint is not None:
        if ema is not None:
            ema.restore(checkpoint, model_without_ddp)
        start_epoch, best_score, history = restore_training(checkpoint, args.resume, optimizer, lr_scheduler, scaler)
        retarget_scheduler(lr_scheduler, *schedule)  # a changed --epochs, --lr-step-size, ... takes effect
        if args.lr != checkpoint["args"]["lr"]:  # a lower --lr after a diverged run must take effect
            set_base_lr(optimizer, lr_scheduler, args.lr)
        all_changes = [*checkpoint.get("changes", []), *({"epoch": start_epoch, **c} for c in changes)]
        if start_epoch >= args.epochs:
            print(f"{args.resume} has trained {start_epoch} epochs already: pass --epochs above {start_epoch}")

    if distributed.is_main_process():
        if earlier:
            removed = run_folder.remove_earlier_run(output_dir)
            print(f"--overwrite: removed the earlier run's {', '.join(removed)} from {output_dir}")
        for path in utils.remove_stale_temporaries(output_dir):  # left by a run that was killed while writing
            print(f"removed {path}, an unfinished write of a killed run")
        run_folder.warn_if_little_space(output_dir, checkpoint_size(model_without_ddp, args.opt))
        utils.write_json({**vars(args), "class_names": classes, "changes": all_changes}, output_dir / "args.json")
        utils.write_json(split, output_dir / "split.json")
        utils.write_jsonl(history, output_dir / "metrics.jsonl")  # drops epochs the checkpoint does not hold
    # The dataset's own category ids (predict.py writes them) and keypoints (drawn by name) travel with the model
    config = {**model_config(model_without_ddp, args.model), "class_names": classes, "category_ids": data.category_ids}
    if names:
        config.update(keypoint_names=names, skeleton=data.skeleton, keypoint_sigmas=sigmas,
                      keypoint_flip_map=args.keypoint_flip_map)  # fmt: skip
    tensorboard = None
    if args.tensorboard and distributed.is_main_process():
        tensorboard = TensorBoardLogger(output_dir / "tensorboard", start_epoch)
    # --time-budget: the epochs are planned in the first epoch and the second, and revised after every later one,
    # each time before its save (budget.py)
    budget, plans, writes_seconds, epoch_times = None, 0, 0.0, []
    if args.time_budget:
        carried = (checkpoint or {}).get("budget") or {}
        budget = TimeBudget(args.time_budget, carried.get("spent", 0.0))
        plans = 0 if any(c["flag"] == "--time-budget" for c in changes) else carried.get("plans", 0)
        epoch_times = list(carried.get("epoch_seconds", [])) if plans else []
    stats = None
    print(f"Training {args.model} on {len(split['train'])} images, testing on {len(split['test'])}")
    epoch = start_epoch
    while epoch < args.epochs:
        train_loader.batch_sampler.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        if isinstance(train_loader.collate_fn, Mosaic):  # the last epochs, as planned now, train on whole pictures
            close_mosaic(train_loader.collate_fn, epoch, args.epochs, args.close_mosaic)
        start = time.time()
        picture = None
        if epoch == 0 and distributed.is_main_process():  # what the model is fed, ground truth drawn: worth a look
            picture = partial(save_batch_picture, class_names=classes, path=output_dir / "first_batch.png",
                              skeleton=data.skeleton)  # fmt: skip
        deadline = budget.deadline() if plans else None  # the first epoch, which is timed, is never cut
        try:
            losses = train_one_epoch(model, optimizer, train_loader, device, epoch, args.print_freq, scaler, picture,
                                     deadline, ema)  # fmt: skip
        except OutOfTime as stop:
            print(f"{stop}: epoch {epoch} is dropped; the run ends with epoch {epoch - 1} (--time-budget)")
            break
        train_seconds = time.time() - start
        lr = optimizer.param_groups[0]["lr"]
        chooser = None  # the validation images' scores, which choose best.pth; without them the test images'
        if val_loader is not None:
            print(f"Validation split ({len(split['val'])} images: they choose best.pth)")
            chooser = evaluate(evaluated, val_loader, device, classes, **scoring)
            print(f"Test split ({len(split['test'])} images)")
        samples: list[tuple] = []  # the first test images with their detections, for best_predictions.png
        errors: dict[str, Any] = {}  # and what the model gets wrong, for the pictures of errors.py
        stats = evaluate(evaluated, test_loader, device, classes, samples=samples, errors=errors, **scoring)
        eval_seconds = time.time() - start - train_seconds
        lr_scheduler.step()

        record = {"epoch": epoch, "lr": lr, **losses, **stats, "train_seconds": train_seconds}
        record["eval_seconds"] = eval_seconds
        if chooser is not None:
            record["val"] = {name: chooser[name] for name in IOU_TYPES if name in chooser}
        history.append(record)
        chooser = chooser or stats
        score = selection_score(chooser)  # without ground truth nothing ranks the epochs: best.pth is the last
        is_best, best_score = score > best_score or not has_ground_truth(chooser), max(score, best_score)
        if budget is not None:  # the epochs that fit, planned before the save that holds the plan
            epoch_times.append(time.time() - start + writes_seconds)  # training, evaluation, the last epoch's writes
            later = epoch_times[1:] or epoch_times  # after the first plans: the mean of the epochs after the first
            estimate = epoch_times[-1] if plans < PLANS else sum(later) / len(later)
            planned = plan_epochs(args, budget, epoch + 1, estimate, optimizer, output_dir, plans < PLANS)
            lr_scheduler = planned or lr_scheduler
            plans += 1
        writes_start = time.time()
        rng_states = distributed.all_gather_object(get_rng_state())  # every rank takes part; rank 0 writes
        if distributed.is_main_process():
            weights = {"model": evaluated.state_dict(), "model_config": config, "args": vars(args)}
            weights.update(split=split, changes=all_changes, epoch=epoch, stats=stats)
            if budget is not None:
                weights["budget"] = {"spent": budget.spent(), "plans": plans, "epoch_seconds": epoch_times}
            raw = ema.training_state(model_without_ddp) if ema is not None else {}
            save_epoch(
                output_dir, weights, is_best, optimizer, lr_scheduler, scaler, best_score, history, rng_states, raw
            )
            if is_best:
                save_predictions_picture(samples, classes, output_dir / "best_predictions.png", 0.5, data.skeleton)
                if errors:  # the same epoch's errors, and their numbers
                    save_error_pictures(errors, output_dir)
                    utils.write_json({"epoch": epoch, **errors}, output_dir / "errors.json")
            utils.write_jsonl(history, output_dir / "metrics.jsonl")
            plot_curves(history, output_dir / "curves.png")
            if tensorboard is not None:
                tensorboard.log(history[-1])
        writes_seconds = time.time() - writes_start
        epoch += 1
    if tensorboard is not None:
        tensorboard.close()
    print_summary(history, output_dir)
    distributed.cleanup_distributed()
    return stats


def cli(argv: list[str] | None = None) -> None:
    """`python train.py ARGS`: main, with a user's error, a full disk, Ctrl-C and SIGTERM each told in one line and
    ended with SystemExit 2, 2, 130 and 143."""
    arguments, typed = parse_args(argv)
    try:
        main(arguments, typed)
    except utils.WriteFailed as error:  # a full disk: what it needed, what was kept, how to go on
        folder = run_folder.output_folder(arguments, typed)
        first = "free some space" if error.reason in utils.NO_SPACE.values() else ""
        utils.exit_with_user_error(utils.UserError(f"{error}; {run_folder.how_to_continue(folder, first)}"))
    except utils.UserError as error:
        utils.exit_with_user_error(error)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (utils.Terminated): an atomic write kept the old file
        terminated = isinstance(stop, utils.Terminated)
        if distributed.launched_rank() == 0:
            folder = run_folder.output_folder(arguments, typed)
            what = "stopped by SIGTERM" if terminated else "interrupted"
            print(f"\n{what}; {run_folder.how_to_continue(folder)}", flush=True)
        raise SystemExit(143 if terminated else 130) from None


if __name__ == "__main__":
    utils.stop_on_sigterm()  # a scheduler's preemption, docker stop, kill: stop as on Ctrl-C
    cli()
