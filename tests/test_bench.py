import json

import bench


def test_bench_measures_each_precision_in_its_own_process(pennfudan, tmp_path, capsys):
    output = tmp_path / "bench.json"
    args = bench.get_args_parser().parse_args(
        ["--data-path", str(pennfudan), "--models", "maskrcnn_mobilenet_v3_large_fpn", "--min-size", "64",
         "--max-size", "128", "--iterations", "2", "--warmup", "1", "-j", "0", "--output", str(output)]
    )  # fmt: skip
    report = bench.main(args)
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    assert [row["precision"] for row in report["training"]] == ["float32", "bfloat16"]  # CPU: --amp is bfloat16
    for row in report["training"]:
        assert row["images_per_second"] > 0 and row["peak_memory_mb"] > 100
        assert abs(row["images_per_second"] * row["seconds_per_iteration"] - 2) < 1e-6  # 2 images per iteration
        assert row["final_loss"] > 0
    assert "images_per_second" in capsys.readouterr().out  # the table
