"""The injection report measures what the temporal layers read: nothing moves for the base injected
into itself, the shift grows with the interpolation weight, Spatial Adapters made to undo a known
change close it, and the node runs in ComfyUI and shows its table."""
import json
import os
from pathlib import Path

import pytest
import torch

from adapters import inject, loading
from adapters.injection_report import injection_report, motion_module_names
from adapters.spatial_adapters import SpatialAdapters
from adapters.video_model import AdapterPatch
from adapter_models import trained  # noqa: F401  (fixture)
from comfy_host import ComfyError
from browser import browser  # noqa: F401  (fixture)

CHEAP = dict(prompts=["a red circle", "a sks star"], seed=3, timesteps=(999, 500), frames=4, width=32, height=32)


@pytest.fixture(scope="module")
def base(tiny_files):
    return loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])


def test_blocks_are_every_motion_module_in_run_order(base):
    names = motion_module_names(base.unet)
    every = [n for n, _ in base.unet.named_modules() if n.rsplit(".", 2)[-2:-1] == ["motion_modules"]]
    assert sorted(names) == sorted(every) and len(names) >= 5
    heads = [n.split(".")[0] for n in names]
    assert heads == sorted(heads, key=["down_blocks", "mid_block", "up_blocks"].index)


def test_base_injected_into_itself_moves_nothing(base, tiny_files, tmp_path):
    same = inject.inject_checkpoint(base, tiny_files.checkpoint)  # an identical checkpoint: no tensor differs
    rep = injection_report(same, **CHEAP)
    assert all(b.shift == 0.0 for b in rep.blocks) and rep.shift == 0.0
    assert rep.cosine == pytest.approx(1.0, abs=1e-6)
    assert "no customization injected" in rep.text()
    # the same base loaded again and linked as the base: the same features to the last bit
    other = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])
    rep = injection_report(same, base=other, **CHEAP)
    assert rep.shift == 0.0 and rep.closed is None


def test_shift_grows_with_the_interpolation_weight(base, tiny_files):
    shifts = []
    for w in (0.25, 0.5, 0.75, 1.0):
        rep = injection_report(inject.inject_checkpoint(base, tiny_files.custom_checkpoint, weight=w), **CHEAP)
        assert rep.customization and rep.customization[0].startswith(("checkpoint weights", "interpolated weights"))
        shifts.append(rep.shift)
    assert shifts[0] > 0.01
    assert all(a < b for a, b in zip(shifts, shifts[1:])), shifts


def _block_outputs(model):
    """Layers whose output the temporal layers read next: transformer proj_out and resnet conv2."""
    return [n for n, m in model.unet.named_modules() if ".motion_modules." not in n
            and (n.endswith(".proj_out") and ".attentions." in n or n.endswith(".conv2") and ".resnets." in n)
            and "_blocks" in n]


def _known_change(base, rank=2, std=0.6):
    """A customized model whose every chosen layer's output passes through a known (I + P), P = d·u
    random and low-rank (written as merged weights), and Spatial Adapters set to its inverse:
    (I + d·u)⁻¹ = I − d (I_r + u·d)⁻¹ u."""
    modules = dict(base.unet.named_modules())
    targets = _block_outputs(base)
    p = SpatialAdapters({n: SpatialAdapters.factor_shape(modules[n]) for n in targets}, rank, seed=11)
    inverse = SpatialAdapters({n: SpatialAdapters.factor_shape(modules[n]) for n in targets}, rank, seed=11)
    g = torch.Generator().manual_seed(12)
    tensors = {}
    with torch.no_grad():
        for n in targets:
            d, u = p.factors(n)
            u.copy_(torch.randn(u.shape, generator=g) * std)
            di, ui = inverse.factors(n)
            di.copy_(d)
            ui.copy_(-torch.linalg.solve(torch.eye(rank) + u @ d, u))
            for leaf in ("weight", "bias"):
                tensors[f"{n}.{leaf}"] = p.merged_weight(n, getattr(modules[n], leaf).data, 1.0)
    custom = inject.inject_weights(base, tensors, source="(I+P)")
    assert sorted(custom.injected_layers()) == sorted(targets)
    return custom, inverse


def test_spatial_adapters_that_undo_a_known_change_close_it(base):
    custom, inverse = _known_change(base)
    rep = injection_report(custom, adapters=inverse, **CHEAP)
    assert rep.shift > 0.05
    for b in rep.blocks:
        assert b.shift > 0.01 and b.shift_after < 1e-4 * max(1.0, b.shift), b
        assert b.closed == pytest.approx(1.0, abs=1e-3)
    assert rep.closed == pytest.approx(1.0, abs=1e-4)
    # attached (unmerged, as hooks) instead of given: the same answer
    attached = custom.with_patch(AdapterPatch(inverse, 1.0, merged=False, source="inverse"))
    rep2 = injection_report(attached, **CHEAP)
    assert rep2.shift == pytest.approx(rep.shift, rel=1e-6)
    assert rep2.closed == pytest.approx(1.0, abs=1e-4) and rep2.adapters
    # half strength closes part of it, zero nothing
    half = injection_report(custom, adapters=inverse, strength=0.5, **CHEAP)
    assert 0.2 < half.closed < 0.9
    zero = injection_report(custom, adapters=inverse, strength=0.0, **CHEAP)
    assert zero.closed == pytest.approx(0.0, abs=1e-9)
    text = rep.text()
    for b in rep.blocks:
        assert b.block in text
    assert "closed" in text and "100%" in text


def test_the_base_stays_the_base_under_other_patches(base, tiny_files):
    """A linked base is compared as it is; one of another architecture or motion module is refused."""
    custom = inject.inject_checkpoint(base, tiny_files.custom_checkpoint)
    derived = injection_report(custom, **CHEAP)
    linked = injection_report(custom, base=base, **CHEAP)
    assert linked.shift == pytest.approx(derived.shift, rel=1e-6)
    v3 = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v3"])
    with pytest.raises(ValueError, match="another motion module"):
        injection_report(custom, base=v3, **CHEAP)
    with pytest.raises(ValueError, match="0 to 999"):
        injection_report(custom, **dict(CHEAP, timesteps=(1000,)))
    with pytest.raises(ValueError, match="multiples of 8"):
        injection_report(custom, **dict(CHEAP, width=30))


def test_given_latents_set_the_size(base, tiny_files):
    custom = inject.inject_checkpoint(base, tiny_files.custom_checkpoint)
    lat = torch.randn(1, base.unet.config.in_channels, 3, 4, 2, generator=torch.Generator().manual_seed(0))
    rep = injection_report(custom, latents=lat, **dict(CHEAP, frames=8))
    assert (rep.frames, rep.width, rep.height) == (3, 16, 32) and rep.shift > 0
    with pytest.raises(ValueError, match="one per prompt"):
        injection_report(custom, latents=lat.repeat(3, 1, 1, 1, 1), **CHEAP)


# ---- ComfyUI and the command line -------------------------------------------------------------------

@pytest.fixture(scope="module")
def host(comfy, comfy_files, trained):
    comfy.add_model("checkpoints", comfy_files.BASE, comfy_files.base)
    comfy.add_model("checkpoints", comfy_files.CUSTOM, comfy_files.custom)
    comfy.add_model("animatediff_models", comfy_files.MOTION, comfy_files.motion)
    comfy.add_model("still_moving", "spatial/report_spatial_adapters.safetensors", trained.files["spatial"])
    comfy.add_model("still_moving", "motion/report_motion_adapter.safetensors", trained.files["motion"])
    return comfy


def _graph(cf, ckpt, **extra):
    inputs = dict(video_model=["inj", 0], prompts="a sks dog running\n\na dog", seed=1, timesteps="999, 600",
                  width=64, height=64, frames=2, adapter_strength=1.0)
    inputs.update(extra)
    return {"load": {"class_type": "SM_LoadVideoModel", "inputs": {"ckpt_name": cf.BASE, "motion_module": cf.MOTION,
                                                                    "dtype": "auto"}},
            "inj": {"class_type": "SM_InjectCheckpoint", "inputs": {"video_model": ["load", 0], "ckpt_name": ckpt,
                                                                     "weight": 1.0, "inject_text_encoder": True}},
            "rep": {"class_type": "SM_InjectionReport", "inputs": inputs}}


def test_report_node_runs_in_comfyui_and_shows_its_table(host, comfy_files):
    cf = comfy_files
    result = host.run(_graph(cf, cf.CUSTOM))
    text, as_json, shift, closed = (o[0] for o in result.outputs["rep"])
    assert result.ui["rep"]["text"][0] == text
    data = json.loads(as_json)
    assert data["prompts"] == ["a sks dog running", "a dog"] and data["timesteps"] == [999, 600]
    assert shift == pytest.approx(data["shift"]) and shift > 0 and closed == 0.0
    assert "down_blocks.0.motion_modules.0" in text and "overall" in text
    # the base injected into itself: nothing moved
    same = host.run(_graph(cf, cf.BASE)).outputs["rep"]
    assert same[2][0] == 0.0
    # a linked base (the loader's output) is the comparison's base
    linked = host.run(_graph(cf, cf.CUSTOM, base_video_model=["load", 0])).outputs["rep"]
    assert linked[2][0] == pytest.approx(shift, rel=1e-5)


def test_report_node_measures_linked_spatial_adapters(host, comfy_files, trained):
    """Load Adapter -> the node's adapter input: 'closed' is what the library computes for the
    same customized model and adapters."""
    g = _graph(comfy_files, comfy_files.CUSTOM, adapter=["ad", 0], adapter_strength=0.5)
    g["ad"] = {"class_type": "SM_LoadAdapter", "inputs": {"adapter_name": "spatial/report_spatial_adapters.safetensors"}}
    result = host.run(g)
    text, _, shift, closed = (o[0] for o in result.outputs["rep"])
    want = injection_report(trained.custom, adapters=trained.spatial, strength=0.5, prompts=["a sks dog running", "a dog"],
                            seed=1, timesteps=(999, 600), frames=2, width=64, height=64)
    assert shift == pytest.approx(want.shift, rel=1e-4) and closed == pytest.approx(want.closed, abs=1e-4)
    assert closed != 0.0 and "closed" in text and "spatial adapter (UNet, 0.5)" in text


def test_motion_adapter_check_node_runs_in_comfyui(host, comfy_files, trained):
    """Load Adapter -> Motion Adapter Check on the injected model: the text on the node is the
    output, says the model is customized, and its share is the library's check on the same videos."""
    from adapters.motion_adapter import check_freezes
    cf = comfy_files
    g = _graph(cf, cf.CUSTOM)
    del g["rep"]
    inputs = dict(video_model=["inj", 0], motion_adapter=["ad", 0], prompts="a sks dog running\na dog\na dog",
                  seed=7, videos_per_prompt=1, steps=2, cfg=6.0, width=64, height=64, frames=4)
    g["ad"] = {"class_type": "SM_LoadAdapter", "inputs": {"adapter_name": "motion/report_motion_adapter.safetensors"}}
    g["check"] = {"class_type": "SM_MotionAdapterCheck", "inputs": inputs}
    result = host.run(g)
    text, kept = (o[0] for o in result.outputs["check"])
    assert result.ui["check"]["text"][0] == text
    want = check_freezes(trained.custom, trained.motion, ["a sks dog running", "a dog"], seeds=(7,), steps=2,
                         cfg=6.0, width=64, height=64, frames=4)
    assert kept == pytest.approx(want.share, rel=1e-4) and text == want.summary()
    assert "1 seed(s)" in text and "customized model" in text
    # Spatial Adapters where the Motion Adapter goes: refused, saying what the input needs
    g["ad"]["inputs"]["adapter_name"] = "spatial/report_spatial_adapters.safetensors"
    with pytest.raises(ComfyError, match="needs a motion adapter, got a spatial adapter"):
        host.run(g)


def test_report_from_the_command_line(tiny_files, tmp_path, capsys):
    from adapters import cli
    out = tmp_path / "report.json"
    rc = cli.main(["report", "--checkpoint", str(tiny_files.checkpoint), "--motion-module",
                   str(tiny_files.motion_files["v2"]), "--inject", str(tiny_files.custom_checkpoint),
                   "--prompt", "a red circle", "--timesteps", "999,500", "--frames", "4", "--width", "32",
                   "--height", "32", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    data = json.loads(out.read_text())
    assert data["shift"] > 0 and "overall" in printed and f"{data['shift']:.3f}" in printed
    rc = cli.main(["report", "--checkpoint", str(tiny_files.checkpoint), "--motion-module",
                   str(tiny_files.motion_files["v2"]), "--inject", str(tiny_files.custom_checkpoint),
                   "--timesteps", "99x"])
    assert rc == 1 and "timesteps" in capsys.readouterr().err
    # with Spatial Adapters from a file: what they closed is printed
    custom = inject.inject_checkpoint(loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"]),
                                      tiny_files.custom_checkpoint)
    adapter = SpatialAdapters.for_model(custom, rank=2, seed=1)
    with torch.no_grad():
        for p in adapter.up.values():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    path = adapter.save(tmp_path / "spatial.safetensors")
    rc = cli.main(["report", "--checkpoint", str(tiny_files.checkpoint), "--motion-module",
                   str(tiny_files.motion_files["v2"]), "--inject", str(tiny_files.custom_checkpoint), "--adapter", str(path),
                   "--prompt", "a red circle", "--timesteps", "999", "--frames", "2", "--width", "32", "--height", "32"])
    printed = capsys.readouterr().out
    assert rc == 0 and "closed" in printed and "spatial adapter (UNet, 1): (adapters input)" in printed, printed


def test_motion_adapter_check_from_the_command_line(tiny_files, tmp_path, capsys):
    """``cli check`` prints the library's check of the same model, adapter and videos; a file of
    another kind is refused with its name."""
    from adapters import cli
    from adapters.motion_adapter import MotionAdapter, check_freezes
    from model_files import randomize_up
    plain = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])
    custom = inject.inject_checkpoint(plain, tiny_files.custom_checkpoint)
    adapter = randomize_up(MotionAdapter.for_model(plain, rank=2, seed=1), seed=2, std=0.3)
    path = adapter.save(tmp_path / "motion.safetensors")
    args = ["check", "--checkpoint", str(tiny_files.checkpoint), "--motion-module", str(tiny_files.motion_files["v2"]),
            "--inject", str(tiny_files.custom_checkpoint), "--motion-adapter", str(path), "--prompt", "a red circle",
            "--seed", "4", "--videos-per-prompt", "1", "--steps", "2", "--frames", "4", "--width", "32",
            "--height", "32"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    want = check_freezes(custom, MotionAdapter.load(path), ["a red circle"], seeds=(4,), steps=2, width=32, height=32,
                         frames=4)
    assert printed.strip() == want.summary() and "customized model" in printed, printed
    spatial = SpatialAdapters.for_model(custom, rank=2, seed=1).save(tmp_path / "spatial.safetensors")
    assert cli.main(args[:7] + ["--motion-adapter", str(spatial)] + args[9:]) == 1
    err = capsys.readouterr().err
    assert "spatial.safetensors" in err and "motion" in err, err


# ---- the report on the node, in the real editor ---------------------------------------------------

BUILD = """async () => {
  const app = window.app, g = app.graph;
  g.clear();
  const set = (n, name, v) => { n.widgets.find((w) => w.name === name).value = v; };
  const load = LiteGraph.createNode("SM_LoadVideoModel"); g.add(load);
  set(load, "ckpt_name", "toy_base.safetensors"); set(load, "motion_module", "toy_mm_v2.safetensors");
  const inj = LiteGraph.createNode("SM_InjectCheckpoint"); inj.pos = [0, 300]; g.add(inj);
  set(inj, "ckpt_name", "toy_custom.safetensors");
  load.connect(0, inj, 0);
  const rep = LiteGraph.createNode("SM_InjectionReport"); rep.pos = [400, 0]; g.add(rep);
  set(rep, "prompts", "a sks star moving left"); set(rep, "width", 32); set(rep, "height", 32);
  inj.connect(0, rep, 0);
  const ad = LiteGraph.createNode("SM_LoadAdapter"); ad.pos = [0, 600]; g.add(ad);
  set(ad, "adapter_name", "motion/toy_motion_adapter.safetensors");
  const check = LiteGraph.createNode("SM_MotionAdapterCheck"); check.pos = [400, 500]; g.add(check);
  set(check, "prompts", "a sks star moving left"); set(check, "videos_per_prompt", 1); set(check, "steps", 4);
  set(check, "cfg", 4); set(check, "width", 32); set(check, "height", 32); set(check, "frames", 8);
  inj.connect(0, check, 0); ad.connect(0, check, 1);
  window.__smDone = null;
  app.api.addEventListener("execution_success", () => { window.__smDone = "success"; });
  app.api.addEventListener("execution_error", (e) => { window.__smDone = JSON.stringify(e.detail).slice(0, 600); });
  await app.queuePrompt(0);
  return [rep.id, check.id];
}"""


@pytest.mark.parametrize("frontend", ["pinned", "newest"])
def test_report_shows_on_the_node_in_the_editor(browser, tmp_path_factory, frontend):
    """Queued from the editor on the shipped toy models, the injection report's table and the
    Motion Adapter check appear on their nodes (js/report_text.js), and the seed stays as typed
    (no randomize after each run)."""
    from comfy_host import ComfyServer, add_model_file, comfyui_path, make_base
    repo, home = Path(__file__).resolve().parent.parent, Path(os.environ.get(
        "STILL_MOVING_HOME", Path.home() / ".cache" / "still-moving"))
    base = make_base(tmp_path_factory.mktemp("report_editor"))
    for kind, name, src in (("checkpoints", "toy_base.safetensors", "toy_base.safetensors"),
                            ("checkpoints", "toy_custom.safetensors", "toy_custom_sks_star.safetensors"),
                            ("animatediff_models", "toy_mm_v2.safetensors", "toy_mm_v2.safetensors"),
                            ("still_moving", "motion/toy_motion_adapter.safetensors",
                             "toy_motion_adapter.safetensors")):
        add_model_file(base, kind, name, repo / "embedded" / src)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    root = None if frontend == "pinned" else home / "frontend-newest" / "comfyui_frontend_package" / "static"
    server = ComfyServer(base, comfyui_path(), front_end_root=root)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        page.wait_for_function("() => window.app?.graph && window.LiteGraph?.registered_node_types?.SM_InjectionReport",
                               timeout=120_000)
        page.wait_for_function("() => window.app.api.socket?.readyState === 1", timeout=30_000)
        node, check = page.evaluate(BUILD)
        page.wait_for_function("() => window.__smDone !== null", timeout=120_000)
        assert page.evaluate("() => window.__smDone") == "success", server.log()
        shown = "id => app.graph.getNodeById(id).widgets.find((w) => w.name === 'sm_text_result')?.box.value"
        for n in (node, check):
            page.wait_for_function(f"id => ({shown.split('=> ', 1)[1]})", arg=n, timeout=10_000)
        checked = page.evaluate(shown, check)
        assert checked.startswith("Motion Adapter check (1 prompt(s) x 1 seed(s), 4 steps)"), checked
        assert "customized model" in checked, checked
        text = page.evaluate(shown, node)
        assert text.startswith("Injection report") and "down_blocks.0.motion_modules.0" in text
        assert "toy_custom.safetensors" in text and "overall (mean of blocks)" in text
        widgets = page.evaluate("id => app.graph.getNodeById(id).widgets.map((w) => [w.name, w.value])", node)
        assert ["seed", 0] in widgets and not any("control" in name for name, _ in widgets), widgets
        sent = page.evaluate("async () => (await window.app.graphToPrompt()).output")
        report = next(v for v in sent.values() if v["class_type"] == "SM_InjectionReport")
        assert "sm_text_result" not in report["inputs"]  # the result box is not an input
        assert not errors, errors
    finally:
        context.close()
        server.stop()


@pytest.mark.full
def test_benchmark_runs_on_the_toy_models(capsys):
    """benchmarks/bench_injection_report.py at a small setting: every row is reported, the base has
    no shift, and the stronger the same customization, the larger its shift."""
    from model_files import load_script
    bench = load_script("benchmarks/bench_injection_report.py")
    rows, corr = bench.run(bench.parse_args(["--quick", "--steps", "2"]))
    out = capsys.readouterr().out
    shift = {r["name"]: r["shift"] for r in rows}
    assert shift["base"] == 0.0 and 0 < shift["interp 0.5"] < shift["interp 1"] < shift["delta x 2"], shift
    assert f"SPEARMAN over {len(rows) - 1} customizations" in out and -1 <= corr["travel"] <= 1, out
    # a random change as large as the customization's moves the features far less
    weights = {r["name"]: r["weight_change"] for r in rows}
    assert weights["noise x 1"] == pytest.approx(weights["interp 1"], rel=1e-3)
    assert shift["noise x 1"] < 0.5 * shift["interp 1"], shift
