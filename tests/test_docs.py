"""Every command in README.md and docs/*.md runs as written: each parses against its script's own parser and passes
train.py's checks of impossible flag combinations (the README's resume, test-only and predict commands also run, in
tests/test_readme.py)."""

import argparse
import re
import shlex

import pytest
from conftest import ROOT
from torchvision import tv_tensors

import bench
import dataset_cli
import export
import predict
import train
from model import is_keypoint_model

PARSERS = {
    "train.py": train.get_args_parser,
    "predict.py": predict.get_args_parser,
    "export.py": export.get_args_parser,
    "bench.py": bench.get_args_parser,
    "dataset.py": dataset_cli.get_args_parser,
}
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(text: str) -> list[list[str]]:
    """The commands of a markdown text's bash blocks that run one of our scripts, as argv lists (script first)."""
    found, variables = [], {}
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if len(words) == 1 and re.fullmatch(r"\w+=.*", words[0]):  # B="python bench.py ..."
                name, value = words[0].split("=", 1)
                variables[name] = shlex.split(value)
                continue
            words = [part for word in words for part in variables.get(word.removeprefix("$"), [word])]
            script = next((i for i, word in enumerate(words) if word in PARSERS), None)
            if script is not None and words[0] in ("python", "torchrun"):
                found.append(words[script:])
    return found


def all_commands() -> list[tuple[str, list[str]]]:
    return [(path.relative_to(ROOT).as_posix(), argv) for path in DOCS for argv in commands(path.read_text())]


def test_the_docs_have_commands_to_check():
    scripts = {argv[0] for _, argv in all_commands()}
    assert scripts == set(PARSERS) and len(all_commands()) > 30


@pytest.mark.parametrize(("doc", "argv"), all_commands(), ids=[" ".join(argv)[:70] for _, argv in all_commands()])
def test_each_command_parses_and_passes_train_py_s_checks(doc, argv, monkeypatch):
    script, flags = argv[0], argv[1:]
    try:
        args = PARSERS[script]().parse_args(flags)
    except SystemExit as stop:
        if stop.code == 0 and "--help" in flags:
            return
        pytest.fail(f"{doc}: {' '.join(argv)}: {script} does not take these flags")
    if script == "train.py":
        typed = train.parse_args(flags)[1]
        if not args.resume:
            train.apply_recipe(args, typed)  # an unknown --recipe, --epochs with --time-budget
        monkeypatch.setattr(train.utils, "check_device", lambda device: None)  # a GPU command on this CPU
        if is_keypoint_model(args.model) and not hasattr(tv_tensors, "KeyPoints"):  # (.ci/floors' torchvision)
            with pytest.raises(train.utils.UserError, match="keypoint training needs torchvision 0.23 or later"):
                train.check_args(argparse.Namespace(**vars(args)))
            return
        train.check_args(argparse.Namespace(**vars(args)))
