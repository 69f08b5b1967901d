"""The paper's comparison on the toy world: the full-weights ablation trained by the one loop,
and the benchmark command's quick setting end to end (a complete, finite table and its files).

Not the paper's claims: those are measured by the benchmark's full setting and reported in
benchmarks/README.md.
"""
import json
import math
import types

import numpy as np
import pytest
import torch

from adapters import export, inject, loading, sampling, training
import random_models
from toyworld import world as tw
from toyworld.full_delta import FullDelta
from adapters.lowrank import LowRankAdapter, motion_fingerprint
from adapters.motion_adapter import MotionAdapter

from model_files import load_script


@pytest.fixture(scope="module")
def models(tiny_files):
    base = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])
    return base, inject.inject_checkpoint(base, tiny_files.custom_checkpoint)


def _clips(n, frames, seed, caption):
    g = torch.Generator().manual_seed(seed)
    return [types.SimpleNamespace(latents=torch.randn(4, frames, 4, 4, generator=g), caption=caption)
            for _ in range(n)]


def _noise_pred(model):
    x = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    emb = sampling.encode_text(model, ["a sks star"], "cpu").repeat_interleave(4, 0)
    with model.patched(), torch.no_grad():
        return model.unet(x, torch.tensor([500]), encoder_hidden_states=emb).sample


def test_full_delta_hooks_equal_the_fine_tuned_weights(models):
    """A zero delta changes nothing; a random one gives the same output through forward hooks
    (training) and folded into the weights (``apply``), for the convolutions and the linears."""
    _, custom = models
    delta = FullDelta.for_model(custom)
    kinds = {type(m).__name__ for n, m in custom.unet.named_modules() if n in set(delta.targets)}
    assert {"Conv2d", "Linear"} <= kinds
    plain = _noise_pred(custom)
    handles = delta.attach(custom.unet)
    try:
        torch.testing.assert_close(_noise_pred(custom), plain, rtol=0, atol=0)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in delta.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
        hooked = _noise_pred(custom)
    finally:
        for h in handles:
            h.remove()
    assert float((hooked - plain).norm() / plain.norm()) > 0.1
    torch.testing.assert_close(_noise_pred(delta.apply(custom)), hooked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_noise_pred(custom), plain, rtol=0, atol=0)  # nothing left behind


def test_full_weights_kind_trains_with_the_one_loop_and_resumes_exactly(models, tmp_path):
    base, custom = models
    motion = MotionAdapter.for_model(base, rank=4)
    stills = _clips(2, 1, 3, "a sks star")
    prior = _clips(3, 4, 4, "a red circle moving left")
    s = training.TrainSettings(steps=4, learning_rate=1e-3, frames=4, seed=2, prior_ratio=0.5)
    kw = dict(custom_clips=stills, prior_clips=prior, motion_adapter=motion)
    whole = training.train(custom, FullDelta, s, tmp_path / "whole.safetensors", **kw)
    assert isinstance(whole.adapter, FullDelta) and whole.step == 4
    assert {src for _, _, src in whole.losses} == {"custom", "prior"}
    assert all(math.isfinite(l) for _, l, _ in whole.losses)
    assert any(p.abs().max() > 0 for p in whole.adapter.parameters())
    calls = {"n": 0}

    def stop_after_two():
        calls["n"] += 1
        return calls["n"] > 2
    part = training.train(custom, FullDelta, s, tmp_path / "part.safetensors", should_stop=stop_after_two, **kw)
    assert part.cancelled and FullDelta.load(part.path).metadata["step"] == 2
    resumed = training.train(custom, FullDelta, s, tmp_path / "unused.safetensors", resume=part.path, **kw)
    assert resumed.step == 4
    for a, b in zip(whole.adapter.parameters(), resumed.adapter.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    loaded = FullDelta.load(whole.path)
    assert loaded.targets == whole.adapter.targets
    for a, b in zip(whole.adapter.parameters(), loaded.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="Motion Adapter"):
        training.train(custom, FullDelta, s, tmp_path / "x.safetensors", custom_clips=stills)


# --- the benchmark command --------------------------------------------------------------------

def _bench():
    return load_script("benchmarks/bench_toy_comparison.py")


def write_toy_models(folder, bench):
    """Random weights in the toy models' file names and layouts (base + a DreamBooth-like
    customized copy whose UNet differs a little, a v2 motion module, a Motion Adapter file)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = random_models.sd15_parts("tiny", seed=20)
    g = torch.Generator().manual_seed(21)
    custom_unet = {k: v + 0.05 * v.std().nan_to_num(0) * torch.randn(v.shape, generator=g)
                   for k, v in parts["unet"].items()}
    for key, unet in (("base", parts["unet"]), ("custom", custom_unet)):
        export.write_checkpoint(folder / tw.MODEL_FILES[key], export.checkpoint_tensors(
            unet, parts["vae"], parts["clip"], parts["layout"], parts["vae_levels_layers"]))
    export.write_checkpoint(folder / tw.MODEL_FILES["motion"],
                            export.motion_module_tensors(random_models.motion_module_parts("v2", "tiny", seed=22)))
    vm = loading.load_video_model(folder / tw.MODEL_FILES["base"], folder / tw.MODEL_FILES["motion"])
    ma = MotionAdapter.for_model(vm, rank=4, metadata={"motion_fingerprint": motion_fingerprint(vm)})
    with torch.no_grad():
        for p in ma.up.values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    ma.save(folder / tw.MODEL_FILES["adapter"])
    return folder


def test_quick_comparison_runs_end_to_end(tmp_path):
    from PIL import Image
    bench = _bench()
    models = write_toy_models(tmp_path / "toy_models", bench)
    out = bench.run(bench.parse_args(["--quick", "--models", str(models), "--out", str(tmp_path / "cmp")]))
    report = json.loads((out / "results.json").read_text())
    assert report["setting"] == "quick" and list(report["results"]) == list(bench.METHODS)
    for name, r in report["results"].items():
        assert set(bench.COLUMNS) <= set(r["scores"]), name
        assert all(math.isfinite(r["scores"][k]) for k in bench.COLUMNS), (name, r["scores"])
        assert (r["scores"]["train_s"] > 0) == (name in bench.TRAINED)
    rows = [l for l in (out / "table.md").read_text().splitlines() if l.startswith("| ") and "method" not in l]
    assert [r.split("|")[1].strip() for r in rows] == list(bench.METHODS)
    assert all(len(r.strip("|").split("|")) == len(bench.COLUMNS) + 2 for r in rows)
    assert sorted(p.stem for p in (out / "adapters").glob("*.safetensors")) == sorted(bench.TRAINED)
    # each trained row is the variant it names
    from adapters.files import read_metadata
    meta = {n: read_metadata(out / "adapters" / f"{n}.safetensors") for n in bench.TRAINED}
    settings = {n: json.loads(m["settings"]) for n, m in meta.items()}
    assert {n for n, m in meta.items() if m["kind"] == "full"} == {"full_weights", "interleaved_full"}
    assert {n for n, st in settings.items() if st["interleaved"]} == {"interleaved", "interleaved_full"}
    assert {n for n, st in settings.items() if st["prior_ratio"] == 0} == {"no_prior"}
    sm, no_ma = (LowRankAdapter.load(out / "adapters" / f"{n}.safetensors")
                 for n in ("still_moving", "no_motion_adapter"))
    # the Motion Adapter mattered
    assert any(not torch.equal(a, b) for a, b in zip(sm.parameters(), no_ma.parameters()))
    grid = Image.open(out / "grid_custom.png")
    assert grid.size[1] == len(bench.METHODS) * 128
    with Image.open(out / "grid_custom.gif") as gif:
        assert gif.n_frames == 8
    assert Image.open(out / "plot.png").size[0] > 0 and (out / "grid_base.png").is_file()
    paired_rows = [l for l in (out / "paired.md").read_text().splitlines() if l.startswith("| ") and "method" not in l]
    assert [r.split("|")[1].strip() for r in paired_rows] == [m for m in bench.METHODS if m != "still_moving"]
    assert bench.main(["--report", str(out / "results.json")]) == 0
    # naive injection changes the videos: the customized model is really in the comparison
    videos = {n: report["results"][n]["custom_videos"][0] for n in ("base", "naive")}
    assert max(abs(videos["base"][k] - videos["naive"][k])
               for k in ("fidelity", "colour", "template", "frame_corr")) > 0.003
    # the truth row (the world's own clips) is where the scores say it should be
    truth = report["results"]["truth"]["scores"]
    assert truth["dir_acc"] == 1 and truth["base_dir_acc"] == 1 and truth["leak"] < 0.2  # a disc: ~0.1
    assert truth["fidelity"] > 0.35 and truth["colour"] > 0.6 and truth["template"] > 0.85
    assert truth["colour_acc"] > 0.8
    assert tw.SPEED[0] * (tw.FRAMES - 1) <= truth["along_px"] <= tw.SPEED[1] * (tw.FRAMES - 1)
    assert truth["travel_px"] >= truth["along_px"] - 1e-6


def test_motion_scale_rows_keep_the_spatial_adapters_and_move_the_slider(tmp_path):
    """--motion-scale: naive injection and Still-Moving's own adapters, sampled with the Motion
    Adapter kept at α (the slider), one row per α, paired against still_moving."""
    bench = _bench()
    models = write_toy_models(tmp_path / "toy_models", bench)
    out = bench.run(bench.parse_args(["--quick", "--models", str(models), "--out", str(tmp_path / "cmp"),
                                      "--methods", "naive,still_moving", "--motion-scale=-1,0.5"]))
    results = json.loads((out / "results.json").read_text())["results"]
    slid = [f"{n} α={a}" for n in ("naive", "still_moving") for a in ("-1", "+0.5")]
    assert list(results) == ["naive", "still_moving"] + slid
    assert sorted(p.stem for p in (out / "adapters").glob("*.safetensors")) == ["still_moving"]
    for name in slid:
        plain = results[name.split(" ")[0]]
        assert results[name]["scores"]["train_s"] == plain["scores"]["train_s"]
        corr, plain_corr = (r["custom_videos"][0]["frame_corr"] for r in (results[name], plain))
        assert abs(corr - plain_corr) > 0.001, name
    paired_rows = [l.split("|")[1].strip() for l in (out / "paired.md").read_text().splitlines()
                   if l.startswith("| ") and "method" not in l]
    assert paired_rows == ["naive"] + slid


def test_paired_differences_match_prompt_and_seed():
    """paired(): rows are matched on (prompt, seed), not on their order; the mean difference is
    the difference of the means, and the standard error is that of the differences."""
    bench = _bench()
    def rows(values, order):
        return [dict({k: 0.0 for k in bench.COLUMNS}, travel_px=values[i], leak=values[i] / 10,
                     prompt=f"p{i % 2}", seed=i // 2) for i in order]
    a, b = [3.0, 5.0, 4.0, 9.0], [1.0, 2.0, 2.0, 4.0]
    results = {"still_moving": {"custom_videos": rows(b, range(4)), "base_videos": rows(b, range(4))},
               "naive": {"custom_videos": rows(a, (3, 1, 0, 2)), "base_videos": rows(a, (2, 0, 3, 1))}}
    ref, out = bench.paired(results)
    d = np.subtract(a, b)
    mean, se, n = out["naive"]["travel_px"]
    assert ref == "still_moving" and n == 4 and list(out) == ["naive"]
    assert mean == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / 2)
    assert out["naive"]["leak"][0] == pytest.approx(d.mean() / 10)
    assert "+3.000 ± 0.707" in bench.paired_table(results)


def test_scores_tell_customization_motion_and_colour_apart():
    """On rendered clips, where the truth is known: the customization's fidelity and template
    scores separate the 'sks star' from base-world shapes, and a frozen clip has no motion."""
    bench = _bench()
    tw = bench.tw
    refs = tw.custom_templates()
    star = bench.video(None, tw.custom_caption("up"), 1, None, "cpu")
    circle = bench.video(None, tw.caption("red", "circle", "up"), 1, None, "cpu")
    s_star, s_circle = bench.score_custom(star, "up", refs), bench.score_custom(circle, "up", refs)
    assert s_star["fidelity"] > 0.35 > 0.2 > s_circle["fidelity"]
    assert s_star["colour"] > 0.6 > 0.05 > s_circle["colour"]
    assert s_star["template"] > s_circle["template"] + 0.3
    assert s_star["went"] == s_circle["went"] == "up"
    frozen = bench.score_custom(star[:1].expand(8, -1, -1, -1), "up", refs)
    assert frozen["dir_acc"] == 0 and frozen["along_px"] == 0 and frozen["speed_px"] == 0 and frozen["travel_px"] == 0
    assert s_star["travel_px"] == pytest.approx(abs(s_star["along_px"]), abs=0.5) and s_star["travel_px"] > 8
    assert frozen["frame_corr"] == pytest.approx(1.0, abs=1e-5)
    base = bench.score_base(circle, "red", "up")
    assert base["colour_acc"] > 0.8 and bench.score_base(circle, "blue", "up")["colour_acc"] < 0.05


# --- the pre-registered comparison ----------------------------------------------------------------

def test_preregistered_defaults_are_the_preregistration():
    """--preregistered alone runs exactly what benchmarks/README.md pre-registered (nothing to
    label); any change of setting is named in the verdict."""
    bench = _bench()
    s, names = bench.configure(bench.parse_args(["--preregistered"]))
    assert names == list(bench.PREREGISTERED["methods"]) and s["train_seeds"] == (0, 1, 2)
    assert bench.differences(s, names, False) == []
    s, names = bench.configure(bench.parse_args(["--preregistered", "--caption-dropout", "0.1", "--seeds", "3"]))
    assert bench.differences(s, names, False) == ["seeds", "caption_dropout"]
    s, names = bench.configure(bench.parse_args(["--preregistered", "--stills", "32"]))
    assert s["stills"] == 32 and bench.differences(s, names, False) == ["stills"]
    s, names = bench.configure(bench.parse_args(["--premise-only"]))
    assert names == ["base", "naive"] and s["base_prompts"] == () and bench.differences(s, names, True) == []


def _row(**scores):
    return {"scores": scores}


def test_verdict_applies_the_thresholds_as_written():
    """Each criterion at its threshold holds (>= ... as written; criterion 3 is strict), just past
    it fails; the premise the same way. Values are sums of 1/40ths, as the benchmark's are."""
    bench = _bench()
    at = {"base": _row(dir_acc=1.0, template=0.55), "naive": _row(dir_acc=29 / 40, template=0.70),
          "interpolation": _row(dir_acc=35 / 40 + 0.05, template=0.66),
          "still_moving": _row(dir_acc=29 / 40 + 0.15, template=0.67)}
    assert [ok for _, ok in bench.criteria(at)] == [True, True, True, True]
    past = {k: {"scores": dict(v["scores"])} for k, v in at.items()}
    past["still_moving"]["scores"].update(dir_acc=29 / 40 + 0.125, template=0.66)
    assert [ok for _, ok in bench.criteria(past)] == [False, False, False, False]
    t2i = [{"colour_acc": v} for v in (0.7, 0.9)]
    prem = bench.premise(at, t2i)
    assert prem["a_met"] and prem["b_met"] and prem["t2i_colour_acc"] == pytest.approx(0.8)
    lines = bench.verdict(at, prem, [])
    assert lines[-1] == "outcome: PASS (all four criteria hold)" and not any("NOT" in l for l in lines)
    worse = dict(at, naive=_row(dir_acc=31 / 40, template=0.70))
    prem = bench.premise(worse, [{"colour_acc": 0.79}])
    assert not prem["a_met"] and not prem["b_met"]
    lines = bench.verdict(past, prem, ["seeds"])
    assert lines[0].startswith("NOT the pre-registered run: seeds")
    assert "the premise is not met" in "\n".join(lines)
    assert lines[-1] == "outcome: FAIL ((1), (2), (3), (4) fail)"


def test_preregistered_quick_run_trains_per_seed_and_gives_a_verdict(tmp_path):
    """Each training seed trains its own adapters; the row is their mean ± standard error over
    the seeds, each seed's run kept; the verdict is recomputed from the saved scores."""
    bench = _bench()
    models = write_toy_models(tmp_path / "toy_models", bench)
    out = bench.run(bench.parse_args(["--quick", "--preregistered", "--seeds", "2", "--train-seeds", "0,1",
                                      "--models", str(models), "--out", str(tmp_path / "cmp")]))
    report = json.loads((out / "results.json").read_text())
    results = report["results"]
    assert list(results) == list(bench.PREREGISTERED["methods"])
    files = sorted(p.name for p in (out / "adapters").glob("*.safetensors"))
    assert files == ["still_moving_seed0.safetensors", "still_moving_seed1.safetensors"]
    a, b = (LowRankAdapter.load(out / "adapters" / f) for f in files)
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    sm = results["still_moving"]
    assert sm["se_over"] == "training seeds" and sm["train_seeds"] == [0, 1] and set(sm["per_seed"]) == {"0", "1"}
    runs = [sm["per_seed"][k] for k in ("0", "1")]
    assert runs[0]["custom_videos"] != runs[1]["custom_videos"]
    for k in bench.COLUMNS:
        v = [r["scores"][k] for r in runs]
        assert sm["scores"][k] == pytest.approx(np.mean(v))
        assert sm["se"][k] == pytest.approx(abs(v[0] - v[1]) / 2)  # std (ddof 1) / sqrt 2 of two values
    first = sm["custom_videos"][0]
    assert first["travel_px"] == pytest.approx(np.mean([r["custom_videos"][0]["travel_px"] for r in runs]))
    base = results["base"]
    assert base["se_over"] == "videos" and "per_seed" not in base
    d = [v["template"] for v in base["custom_videos"]]
    assert base["se"]["template"] == pytest.approx(np.std(d, ddof=1) / math.sqrt(len(d)))
    prem = report["premise"]
    assert prem["t2i_images"] == len(bench.BASE_PROMPTS) * 2
    assert prem["base_dir_acc"] == base["scores"]["dir_acc"]
    assert prem["naive_dir_acc"] == results["naive"]["scores"]["dir_acc"]
    lines = (out / "verdict.md").read_text().splitlines()
    assert lines[0].startswith("- NOT the pre-registered run: seeds, train_seeds")
    held = bench.criteria(results)
    for label, ok in held:
        assert f"- {label}: {'PASS' if ok else 'FAIL'}" in lines
    assert lines[-1].startswith("- outcome: PASS" if all(ok for _, ok in held) else "- outcome: FAIL")
    assert "± " in (out / "table.md").read_text().splitlines()[-1]  # still_moving: mean ± SE
    # why, if it fails: the injection report on each seed's adapters, per block
    reports = bench.diagnose(out)
    assert list(reports) == ["still_moving_seed0", "still_moving_seed1"]
    rows = [l for l in (out / "diagnosis.md").read_text().splitlines()
            if l.startswith("| ") and not l.startswith("| block |")]
    assert len(rows) == len(reports["still_moving_seed0"].blocks) + 1 and rows[-1].startswith("| overall")
    for r in reports.values():
        assert r.shift > 0 and r.shift_after is not None and all(b.closed is not None for b in r.blocks)


def test_premise_only_samples_base_and_naive_and_the_t2i(tmp_path):
    bench = _bench()
    models = write_toy_models(tmp_path / "toy_models", bench)
    out = bench.run(bench.parse_args(["--quick", "--premise-only", "--seeds", "1",
                                      "--models", str(models), "--out", str(tmp_path / "cmp")]))
    report = json.loads((out / "results.json").read_text())
    assert list(report["results"]) == ["base", "naive"] and not list((out / "adapters").iterdir())
    assert all(not r["base_videos"] for r in report["results"].values())
    lines = (out / "verdict.md").read_text().splitlines()
    assert [l.split(":")[0] for l in lines[1:]] == ["- premise (a)", "- premise (b)"]
    assert report["premise"]["t2i_images"] == len(bench.BASE_PROMPTS)
    assert all(0 <= r["colour_acc"] <= 1 for r in report["t2i_images"])
