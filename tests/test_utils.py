import errno

import pytest
import torch

import utils


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    checkpoint = {"model": {"w": torch.arange(3.0)}, "args": {"lr": 0.01, "data_path": "x"}, "epoch": 4}
    utils.save_checkpoint(checkpoint, tmp_path / "sub" / "checkpoint.pth")
    loaded = torch.load(tmp_path / "sub" / "checkpoint.pth", weights_only=True)
    assert loaded["epoch"] == 4 and loaded["args"] == checkpoint["args"]
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["checkpoint.pth"]


def test_a_full_disk_leaves_the_previous_checkpoint_intact_and_says_what_it_needed(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    utils.save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, f):  # as torch.save fails: its zip writer turns the OSError into a RuntimeError
        f.write(b"half a checkpoint")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0") from None

    monkeypatch.setattr(torch, "save", disk_full)
    state = {"epoch": 2, "model": {"w": torch.zeros(3 * 2**20)}}  # 12 MB of weights
    with pytest.raises(utils.WriteFailed) as caught:
        utils.save_checkpoint(state, path)
    message = str(caught.value)
    assert message.startswith(f"no space left on device while writing {path} (it needs about 12 MB, ")
    assert message.endswith(" free)") and caught.value.needed == 12 * 2**20
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.EDQUOT, "disk quota exceeded"), (errno.ESTALE, "the folder's disk is gone"), (errno.EACCES, None)],
)
def test_every_json_write_says_why_it_failed(tmp_path, monkeypatch, code, reason):
    real_fdopen = utils.os.fdopen

    class Refusing:
        def __init__(self, handle, mode):
            self.file = real_fdopen(handle, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(code, "refused")

    monkeypatch.setattr(utils.os, "fdopen", Refusing)
    if reason is None:  # not a matter of space: the OSError itself, for the caller
        with pytest.raises(PermissionError):
            utils.write_json({"a": 1}, tmp_path / "args.json")
        return
    with pytest.raises(utils.WriteFailed, match=f"^{reason}.* while writing {tmp_path / 'args.json'} "):
        utils.write_json({"a": 1}, tmp_path / "args.json")
    assert not list(tmp_path.iterdir())


def test_read_jsonl_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    utils.write_jsonl([{"epoch": 0}, {"epoch": 1}], path)
    with open(path, "a") as f:
        f.write('{"epoch": 2, "lo')
    assert utils.read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
    assert utils.read_jsonl(tmp_path / "missing.jsonl") == []


def test_one_line_unwraps_a_dataloader_worker_error():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise utils.UserError("images/a.png: cannot read the image (truncated); replace or remove the file")

    loader = torch.utils.data.DataLoader(Broken(), num_workers=1)
    with pytest.raises(utils.UserError) as error:
        next(iter(loader))
    assert "\n" in str(error.value)  # the worker's traceback rides along in the message
    assert utils.one_line(error.value) == "images/a.png: cannot read the image (truncated); replace or remove the file"
    assert utils.one_line(utils.UserError("plain")) == "plain"


def test_smoothed_value_and_metric_logger(capsys):
    value = utils.SmoothedValue(window_size=3)
    for x in (1.0, 2.0, 3.0, 10.0):
        value.update(x)
    assert value.median == 3.0 and value.global_avg == 4.0 and value.value == 10.0
    logger = utils.MetricLogger()
    items = []
    for item in logger.log_every(range(5), print_freq=2, header="Epoch: [7]"):
        logger.update(loss=torch.tensor(float(item)))
        items.append(item)
    assert items == list(range(5))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[:-1]] == ["[0/5]", "[2/5]", "[4/5]"]
    assert "eta:" in lines[0] and "loss: 2.0000 (2.0000)" in lines[2] and "max mem:" in lines[0]
    assert lines[-1].startswith("Epoch: [7] Total time:")


def test_collate_keeps_images_and_targets_apart():
    images, targets = utils.collate_fn([("a", {"n": 1}), ("b", {"n": 2})])
    assert images == ("a", "b") and targets == ({"n": 1}, {"n": 2})
