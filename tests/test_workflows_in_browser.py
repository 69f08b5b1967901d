"""The shipped workflows in the real ComfyUI editor: the frontend ComfyUI serves, in Debian's
chromium driven by Playwright, opens each file, converts it with its own graphToPrompt, and the
graph it makes is queued on the real server on small models in the users' file layouts.

Checked per workflow and frontend: every node type is known, no node overlaps another on the
canvas (sizes as the frontend computes them), the frontend reads every saved widget value into
the input scripts/make_workflows.py meant it for, the queued graph succeeds with the files and
events a user would see, and js/loss_plot.js draws each trainer's loss. Screenshots go to
$STILL_MOVING_HOME/screenshots/ (one folder per frontend). The template browser's routes list
and serve exactly the shipped workflows and their thumbnails.

Frontends: the comfyui-frontend-package ComfyUI 0.3.75 pins, and the newest the registry served
when scripts/setup.sh was written (installed by setup.sh beside the venv, served with
--front-end-root).
"""
import importlib.metadata
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from browser import browser  # noqa: F401  (fixture)
from comfy_host import PACK_NAME, ComfyServer, comfyui_path
from model_files import load_script

REPO = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = REPO / "workflows"
MAKE = load_script("scripts/make_workflows.py")
GRAPHS = MAKE.build()
# training first: the generation workflow uses the adapters they write
ORDER = ["train_motion_adapter", "train_spatial_adapters", "generate_with_adapters"]
SHIPPED = sorted(p.stem for p in WORKFLOW_DIR.glob("*.json"))  # generated, and any written by hand
# hand-written ones last: they may use what the generated ones train
NAMES = sorted(SHIPPED, key=lambda n: (ORDER.index(n) if n in ORDER else -1 if n in GRAPHS else len(ORDER), n))
HOME = Path(os.environ.get("STILL_MOVING_HOME", Path.home() / ".cache" / "still-moving"))
NEWEST_FRONTEND = HOME / "frontend-newest"  # pip --target folder written by scripts/setup.sh
SHOTS = HOME / "screenshots"
# A returning user: no first-run template dialog; for the screenshots, no minimap over the graph
# and node text drawn even when a large graph is zoomed out to fit the window.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
            "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.2}
VIEWPORT = {"width": 1600, "height": 1000}

SMALL = {  # per node type: what makes a shipped workflow CI-sized on the small models
    "SM_SampleVideo": {"steps": 2, "width": 64, "height": 64, "frames": 8},
    "SM_TrainMotionAdapter": {"steps": 3, "width": 64, "height": 64, "frames": 4, "save_every": 0},
    "SM_TrainSpatialAdapters": {"steps": 2, "width": 64, "height": 64, "frames": 4, "save_every": 0,
                                "caption_dropout": 0.5},  # the optional widget reaches the trainer
    "SM_MotionAdapterCheck": {"videos_per_prompt": 1, "steps": 2, "width": 64, "height": 64, "frames": 4},
    "SM_GeneratePriorClips": {"count": 2, "steps": 1, "width": 64, "height": 64, "frames": 4},
    "SM_TrainSubjectModule": {"steps": 2, "width": 64, "height": 64, "frames": 4, "save_every": 0},
    "SM_TrainAppearanceAbsorber": {"steps": 2, "width": 64, "height": 64, "frames": 4, "save_every": 0},
    "SM_TrainTemporalLoRA": {"steps": 2, "width": 64, "height": 64, "frames": 4, "save_every": 0},
    "SM_WeightSchedule": {"last_steps": 1},  # the switch happens inside the 2 CI steps
    "KSampler": {"steps": 1},
    "EmptyLatentImage": {"width": 64, "height": 64, "batch_size": 2},
}

# Page-side helpers, defined once per page.
HELPERS = """() => {
  const app = window.app, api = app.api;
  window.__sm = [];
  for (const t of ["progress", "executed", "execution_success", "execution_error", "still_moving.loss"])
    api.addEventListener(t, (e) => window.__sm.push([t, e.detail]));
  const frames = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  window.__smHelp = {
    frames,
    async load(wf, name) {
      await app.loadGraphData(wf, true, true, name);
      app.canvas.setDirty(true, true);
      await frames();
    },
    boxes: () => app.graph._nodes.map((n) => ({id: String(n.id), type: n.type, title: n.title,
                                               box: Array.from(n.getBounding())})),
    unknown: () => app.graph._nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type),
    bypassUnknown: () => app.graph._nodes.filter((n) => !LiteGraph.registered_node_types[n.type])
                                         .forEach((n) => { n.mode = 4; }),
    // show the canvas-space rectangle [x, y, w, h] inside the page rectangle `into`
    async show(rect, into) {
      const ds = app.canvas.ds, [x, y, w, h] = rect, [px, py, pw, ph] = into;
      const s = Math.min(pw / w, ph / h, 1.5);
      ds.scale = s;
      ds.offset[0] = px / s - x + (pw / s - w) / 2;
      ds.offset[1] = py / s - y + (ph / s - h) / 2;
      app.canvas.setDirty(true, true);
      await frames();
      return this.onPage(rect);
    },
    // where the canvas-space rectangle [x, y, w, h] is on the page now
    onPage([x, y, w, h]) {
      const ds = app.canvas.ds, c = app.canvas.canvas.getBoundingClientRect();
      return [c.left + (x + ds.offset[0]) * ds.scale, c.top + (y + ds.offset[1]) * ds.scale, w * ds.scale, h * ds.scale];
    },
  };
  return api.clientId;
}"""


def frontend_version(static_root):
    """The comfyui-frontend-package version of a --target install, or of the venv's."""
    if static_root is None:
        return importlib.metadata.version("comfyui-frontend-package")
    dist = sorted(static_root.parent.parent.glob("comfyui_frontend_package-*.dist-info"))
    return dist[0].name.removesuffix(".dist-info").split("-")[1] if dist else "?"


def write_method_inputs(input_dir, video):
    """What the workflows read from ComfyUI's input folder: the driving video (Load Video), the
    subject's reference images (CustomCrafter) and the one reference video (Customize-A-Video)."""
    if not (input_dir / video.name).exists():
        (input_dir / video.name).symlink_to(video)
    subject = input_dir / "still_moving" / "subject"
    subject.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        img = Image.new("RGB", (80, 64), (40, 40, 40))
        img.paste((200, 120 + 40 * i, 60), (20 + 10 * i, 16, 56 + 10 * i, 48))
        img.save(subject / f"ref_{i}.png")
    ref = input_dir / "still_moving" / "reference_video"
    ref.mkdir(parents=True, exist_ok=True)
    if not (ref / video.name).exists():
        (ref / video.name).symlink_to(video)


@pytest.fixture(scope="module")
def served(comfy_base, comfy_files):
    """The session base with the files the workflows name, and a returning user's settings."""
    cf = comfy_files
    for kind, name, path in [("checkpoints", cf.BASE, cf.base), ("checkpoints", cf.CUSTOM, cf.custom),
                             ("animatediff_models", cf.MOTION, cf.motion), ("controlnet", cf.CONTROLNET, cf.controlnet)]:
        dest = comfy_base / "models" / kind / name
        if not dest.exists():
            dest.symlink_to(path)
    write_method_inputs(comfy_base / "input", cf.driving_video)
    settings = comfy_base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(settings.read_text()) if settings.is_file() else {}
    settings.write_text(json.dumps({**old, **SETTINGS}))
    return comfy_base


class Editor:
    """One browser page on one server: the editor a user opens."""

    def __init__(self, page, server, version, shots):
        self.page, self.server, self.version, self.shots = page, server, version, shots
        self.errors = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.goto(server.url)
        try:
            page.wait_for_function("() => window.app?.graph && window.app.canvas && "
                                   "window.LiteGraph?.registered_node_types?.SM_SampleVideo", timeout=120_000)
        except Exception as e:
            raise AssertionError(f"the editor did not come up with the pack's nodes ({e});\n{server.log()}") from None
        self.client_id = page.evaluate(HELPERS)

    def js(self, expr, arg=None):
        return self.page.evaluate(expr, arg)

    def dialogs(self):
        """The text of the dialogs the editor opened (e.g. missing nodes); closes them."""
        self.js("() => window.__smHelp.frames()")
        texts = self.js("() => [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText.slice(0, 300))")
        for _ in texts:
            self.page.keyboard.press("Escape")
        self.page.wait_for_function("() => !document.querySelector('.p-dialog')", timeout=10_000)
        return texts

    def canvas_area(self):
        """The part of the page where the graph is not under the editor's menus and side bar."""
        return [80, 140, VIEWPORT["width"] - 120, VIEWPORT["height"] - 220]

    def screenshot(self, path, clip=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), clip=clip)
        return path


@pytest.fixture(scope="module", params=["pinned", "newest"], ids=["frontend-pinned", "frontend-newest"])
def editor(request, browser, served):
    root = None
    if request.param == "newest":
        root = NEWEST_FRONTEND / "comfyui_frontend_package" / "static"
        if not (root / "index.html").is_file():
            pytest.fail(f"no frontend at {root}: scripts/setup.sh installs it (pip --target)")
    # --cache-none: every node runs on every queue, so each workflow's events are its own (two
    # workflows share nodes with the same inputs, which ComfyUI would otherwise not run again).
    server = ComfyServer(served, comfyui_path(), front_end_root=root, extra_args=["--cache-none"])
    version = frontend_version(root)
    context = browser.new_context(viewport=VIEWPORT)
    try:
        ed = Editor(context.new_page(), server, version, SHOTS if root is None else SHOTS / f"frontend-{version}")
        assert ed.js("() => window.__COMFYUI_FRONTEND_VERSION__") == version
        print(f"\nscreenshots of frontend {version}: {ed.shots}")
        yield ed
    finally:
        context.close()
        server.stop()


def overlapping(boxes):
    """Pairs of nodes whose boxes (title bar included) intersect."""
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["box"], b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                out.append((f"{a['id']} {a['title']}", f"{b['id']} {b['title']}"))
    return out


def small(graph):
    for node in graph.values():
        node["inputs"].update(SMALL.get(node["class_type"], {}))
    return graph


def adapters_on_disk(base):
    return set((base / "models" / "still_moving").rglob("*.safetensors"))


def stroke_pixels(path, rgb=(0x78, 0xC8, 0xFF)):
    """How many pixels of a screenshot are (nearly) the loss plot's line colour."""
    import numpy as np
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    return int((np.abs(img - np.array(rgb)) < 40).all(axis=-1).sum())


def test_workflow_files_are_what_the_generator_writes():
    for name, g in GRAPHS.items():
        path = WORKFLOW_DIR / f"{name}.json"
        assert path.is_file() and path.read_text() == g.text(), \
            f"{path} differs from scripts/make_workflows.py's; run python scripts/make_workflows.py"


@pytest.mark.parametrize("name", NAMES)
def test_workflow_in_the_editor(editor, name):
    ed, server, base = editor, editor.server, editor.server.base
    workflow = json.loads((WORKFLOW_DIR / f"{name}.json").read_text())
    ed.js("async ([wf, name]) => window.__smHelp.load(wf, name)", [workflow, name])
    dialogs = ed.dialogs()

    # Opens cleanly: every node known, none over another, a screenshot a person can look at.
    unknown = ed.js("() => window.__smHelp.unknown()")
    boxes = ed.js("() => window.__smHelp.boxes()")
    assert len(boxes) == len(workflow["nodes"])
    assert not overlapping(boxes), f"{name}: nodes overlap in the editor: {overlapping(boxes)}"
    xs = [b["box"][0] for b in boxes] + [b["box"][0] + b["box"][2] for b in boxes]
    ys = [b["box"][1] for b in boxes] + [b["box"][1] + b["box"][3] for b in boxes]
    x, y, w, h = ed.js("async ([r, into]) => window.__smHelp.show(r, into)",
                       [[min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], ed.canvas_area()])
    pad = 20  # the graph alone (the thumbnails are made from it), with the badges above the nodes
    print("wrote", ed.screenshot(ed.shots / f"{name}.png",
                                 clip={"x": x - pad, "y": y - pad, "width": w + 2 * pad, "height": h + 2 * pad}))
    if name in GRAPHS:
        assert unknown == [] and dialogs == [], (unknown, dialogs)
    elif unknown:
        # A hand-written workflow for use beside another pack this host lacks (none of the missing
        # nodes is this pack's): queued with those nodes bypassed, as a user without it would.
        assert not [t for t in unknown if t.startswith("SM_")], unknown
        print(f"{name}: bypassing the nodes this host lacks: {sorted(set(unknown))}")
        ed.js("() => window.__smHelp.bypassUnknown()")

    # The frontend's own conversion gives every input what the generator meant: nothing shifted.
    api = ed.js("async () => (await window.app.graphToPrompt()).output")
    if name in GRAPHS:
        meant = GRAPHS[name].api()
        assert sorted(api) == sorted(meant)
        got = {k: {"class_type": api[k]["class_type"], "inputs": {i: api[k]["inputs"].get(i, "(missing)")
                                                                 for i in meant[k]["inputs"]}} for k in meant}
        assert got == meant  # inputs the generator leaves out get the node's defaults

    # Queued as the editor's client, on small sizes, it succeeds.
    before = adapters_on_disk(base)
    ed.js("() => { window.__sm.length = 0; }")
    prompt_id = server.post_prompt(small(api), client_id=ed.client_id)
    entry = server.wait(prompt_id, timeout=1200, raise_on_error=False)
    assert entry["status"]["status_str"] == "success", f"{entry['status']}\n{server.log()}"
    ed.page.wait_for_function("id => window.__sm.some(([t, d]) => t === 'execution_success' && d.prompt_id === id)",
                              arg=prompt_id, timeout=30_000)
    events = ed.js("() => window.__sm")
    outputs = entry["outputs"]

    samplers = [k for k, v in api.items() if v["class_type"] == "SM_SampleVideo"]
    trainers = [k for k, v in api.items() if v["class_type"].startswith("SM_Train")]
    assert samplers or trainers or name not in GRAPHS
    for k in samplers:
        steps = [d["value"] for t, d in events if t == "progress" and d["node"] == k]
        assert steps == [1, 2], f"sampler {k} progress {steps}"
    new = adapters_on_disk(base) - before
    for k in trainers:
        want = SMALL[api[k]["class_type"]]
        losses = [d["step"] for t, d in events if t == "still_moving.loss" and str(d["node"]) == k]
        assert losses == list(range(1, want["steps"] + 1)), f"trainer {k} loss events {losses}"
        from adapters.lowrank import LowRankAdapter
        mine = [p for p in new if p.name.startswith(api[k]["inputs"]["name"])]
        assert len(mine) == 1, f"trainer {k}: new adapter files {sorted(new)}"
        adapter = LowRankAdapter.load(mine[0])
        assert int(adapter.metadata["step"]) == want["steps"]
        settings = adapter.metadata["settings"]  # the node's inputs, optional widgets included, reached the trainer
        assert {key: settings[key] for key in want if key in settings} == {k2: v for k2, v in want.items() if k2 in settings}
        check_loss_plot(ed, name, k, want["steps"])
        if "absorber" in api[k]["inputs"]:  # the absorber it trained with is named by its file
            source = api[api[k]["inputs"]["absorber"][0]]["inputs"]["name"]
            assert [p.name for p in new if p.name.startswith(source)] == [adapter.metadata["absorber"]]
        if api[k]["class_type"] in ("SM_TrainMotionAdapter", "SM_TrainSpatialAdapters"):  # the check, in the
            assert "Motion Adapter check" in outputs[k]["text"][0], outputs[k]                   # output and on the node
            customized = api[k]["class_type"] == "SM_TrainSpatialAdapters"
            assert ("the customized model's own motion" in outputs[k]["text"][0]) == customized, outputs[k]
            shown = ed.js("id => app.graph.getNodeById(Number(id)).widgets.find((w) => w.name === 'sm_text_result')"
                          "?.box.value", k)
            assert shown == outputs[k]["text"][0]
    for k in (k for k, v in api.items() if v["class_type"] == "SM_MotionAdapterCheck"):  # text on the node
        text = outputs[k]["text"][0]
        assert text.startswith("Motion Adapter check (1 prompt(s) x 1 seed(s), 2 steps)") and "customized" in text
        assert ed.js("id => app.graph.getNodeById(Number(id)).widgets.find((w) => w.name === 'sm_text_result')"
                     "?.box.value", k) == text
    for k, node in api.items():
        shown = outputs.get(k, {}).get("images", [])
        if node["class_type"] == "SaveAnimatedWEBP":
            assert len(shown) == 1 and shown[0]["type"] == "output"
            with Image.open(base / "output" / shown[0]["subfolder"] / shown[0]["filename"]) as webp:
                assert webp.size == (64, 64)
                if api[node["inputs"]["images"][0]]["class_type"] == "SM_SampleVideo":
                    assert webp.n_frames == 8
        if node["class_type"] == "PreviewImage":
            src = api[node["inputs"]["images"][0]]
            assert shown and all((base / "temp" / i["subfolder"] / i["filename"]).is_file() for i in shown)
            if src["class_type"] == "VAEDecode" and api[src["inputs"]["samples"][0]]["class_type"] == "SM_SampleVideo":
                assert len(shown) == 8
    assert not ed.errors, ed.errors


def check_loss_plot(ed, name, node_id, steps):
    """js/loss_plot.js kept every step's loss on the node and drew its curve in the plot area
    (the bottom PLOT_HEIGHT + 10 px of the node, which holds nothing else)."""
    node = "window.app.graph._nodes.find((n) => String(n.id) === id)"
    points = ed.js(f"id => ({node}?.smLoss ?? []).map((p) => p.step)", node_id)
    assert points == list(range(1, steps + 1)), f"node {node_id} holds loss points {points}"
    box = ed.js(f"id => Array.from({node}.getBounding())", node_id)
    x, y, w, h = ed.js("async ([r, into]) => window.__smHelp.show(r, into)", [box, ed.canvas_area()])
    ed.screenshot(ed.shots / f"{name}.loss_plot.{node_id}.png", clip={"x": x, "y": y, "width": w, "height": h})
    px, py, pw, ph = ed.js(f"id => {{ const n = {node}; return window.__smHelp.onPage("
                           f"[n.pos[0] + 10, n.pos[1] + n.size[1] - 100, n.size[0] - 20, 90]); }}", node_id)
    plot = ed.screenshot(ed.shots / "plot_area.png", clip={"x": px, "y": py, "width": pw, "height": ph})
    drawn = stroke_pixels(plot)
    plot.unlink()
    assert drawn > 30, f"no loss curve drawn on node {node_id} (see {ed.shots / f'{name}.loss_plot.{node_id}.png'})"


def test_template_browser_lists_and_serves_the_workflows(comfy_server, served):
    """ComfyUI's template routes (app/custom_node_manager.py), as the frontend calls them."""
    http, url = comfy_server.http, comfy_server.url
    for route in ("/workflow_templates", "/api/workflow_templates"):
        listed = http.get(url + route, timeout=30).json()
        assert {k: sorted(v) for k, v in listed.items()} == {PACK_NAME: SHIPPED}, route
    for name in SHIPPED:
        r = http.get(f"{url}/api/workflow_templates/{PACK_NAME}/{name}.json", timeout=30)
        assert r.status_code == 200, (name, r.status_code)
        assert r.json() == json.loads((WORKFLOW_DIR / f"{name}.json").read_text())
        thumb = http.get(f"{url}/api/workflow_templates/{PACK_NAME}/{name}.jpg", timeout=30)
        assert thumb.status_code == 200, f"no thumbnail {name}.jpg: python scripts/make_workflows.py --thumbnails"
        assert thumb.headers["Content-Type"] == "image/jpeg" and len(thumb.content) < 60_000
        with Image.open(io.BytesIO(thumb.content)) as img:
            assert img.format == "JPEG" and img.size == (320, 320)
