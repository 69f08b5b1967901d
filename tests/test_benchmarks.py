"""The CUDA benchmark's code paths, run on the CPU at tiny size: it must not rot between the
rare sessions that have a GPU to run it on."""
import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
