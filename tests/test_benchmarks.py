"""Benchmark scripts run in CI at a small setting so they do not rot: the CUDA benchmark's code
paths on the CPU (it must work in the rare sessions that have a GPU), and the toy-word probe."""
import re

import numpy as np

from model_files import load_script


def _load(name):
    return load_script(f"benchmarks/{name}.py")


def test_bench_cuda_runs_on_cpu_and_matches_the_pipeline(tmp_path, monkeypatch, capsys):
    bench = _load("bench_cuda")
    monkeypatch.setattr(bench._common, "BENCH_DIR", tmp_path)
    rc = bench.main(["--device", "cpu", "--size", "tiny", "--dtype", "fp32", "--amp", "no", "--width", "64",
                     "--frames", "4", "--steps", "2", "--repeats", "1", "--train-width", "64",
                     "--train-steps", "3", "--train-warmup", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rel = float(re.search(r"relative L2 ours vs diffusers (\S+)", out).group(1))
    assert rel < 1e-5, out   # fp32 on the CPU: the same computation as AnimateDiffPipeline
    for line in ("RATIO sampling ours/diffusers time per step", "RATIO decode ours/diffusers time",
                 "RATIO training ours/peft time per step", "ours: Spatial Adapters + MA, checkpointing",
                 "all finite: True"):
        assert line in out, out


def test_bench_toy_words_measures_what_each_word_changes(capsys):
    """The word probe on the shipped toy model: flipping the colour word raises the denoising loss
    at every noise level, the direction word reaches the UNet and the loss rewards the right
    direction, the frame-order probe sees the motion module at work, and the first estimate from
    pure noise takes its sign from the word (the figures: embedded/README.md)."""
    bench = _load("bench_toy_words")
    rows = bench.main(["--clips", "4", "--noises", "4"])
    out = capsys.readouterr().out
    assert "RATIO direction/colour UNet change" in out, out
    for t in bench.TIMESTEPS:
        assert rows["colour"][f"loss_gap_t{t}"] > 0.05, rows
        assert np.isfinite(rows["direction"][f"unet_change_t{t}"]), rows
    assert rows["colour"]["text_at_word"] > 0.5 and rows["direction"]["text_at_word"] > 0.5, rows
    ratio = np.mean([rows["direction"][f"unet_change_t{t}"] / rows["colour"][f"unet_change_t{t}"]
                     for t in bench.TIMESTEPS])
    assert ratio > 0.03, rows
    assert "ARROW reversed/shuffled" in out, out
    order = rows["frame order"]
    assert all(np.isfinite(v) and v >= 0 for v in order.values()), order
    assert order["shuffle_t300"] > 0.05, order
    assert "SEED_DECIDES" in out, out
    first = rows["first estimate"]
    assert set(first) == {999, 700}, first
    assert all(0 <= r["seed_decides"] <= 1 and np.isfinite(list(r.values())).all() for r in first.values()), first
    assert first[700]["on_axis"] > 0.6, first
    for t in (999, 700):
        assert rows["direction"][f"loss_gap_t{t}"] > 0.2, rows
        assert first[t]["seed_decides"] < 0.3 and min(first[t][f"along_{w}"] for w in bench.FLIP["direction"]) > 3, first
