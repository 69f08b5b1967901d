"""Writes the example workflows in workflows/ (ComfyUI's UI format, as the editor saves it) and,
with --thumbnails, their template-browser thumbnails from screenshots.

    python scripts/make_workflows.py                       # workflows/*.json
    python scripts/make_workflows.py --thumbnails DIR      # workflows/*.jpg from DIR/<name>.png

Widgets are given by name, in the node's input order; the file stores them by position, as the
editor does, with the "control after generate" value the editor keeps after every seed ("fixed",
so a shared workflow reproduces and a training run is not re-seeded on each queue). ``build()``
returns the graphs with those names, so the tests can check that the real frontend reads every
value into the input it was meant for. Nodes are stacked in columns from their estimated
heights so that none overlaps another when the editor opens the file; the tests check that
with the sizes the frontend computes. The thumbnails come from the tests' screenshots
($STILL_MOVING_HOME/screenshots, see README).
"""
import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "workflows"
BASE, MOTION, CUSTOM = "v1-5-pruned-emaonly.safetensors", "mm_sd_v15_v2.ckpt", "my_dreambooth_subject.safetensors"
PROMPT = "a photo of sks dog running through a field of flowers, best quality"
NEGATIVE = "blurry, low quality, deformed"

# The editor follows an INT input named like this with a "control after generate" widget.
SEED_NAMES = ("seed", "noise_seed")
NO_SEED_CONTROL = {"SM_MotionAdapterCheck", "SM_InjectionReport"}  # their seed keeps its value between runs
# STRING inputs the nodes declare multiline (a text box, taller than a one-line widget).
MULTILINE = {"text", "prompt", "negative_prompt", "prompts", "caption", "default_caption"}
# Nodes js/loss_plot.js draws a loss plot under (it needs PLOT_HEIGHT + 10 px more).
LOSS_PLOT_ROOM = 100
# Layout: column pitch and the free space between stacked nodes, in canvas pixels; SLACK of a
# node's estimated height is kept free below it too, for inputs a node may gain.
COLUMN, GAP, TITLE, MIN_WIDTH, SLACK = 480, 60, 30, 400, 0.1
# The view a workflow opens with (extra.ds): the whole graph in a window about this big.
VIEW = (1600, 900)


def estimated_height(sockets, outputs, widgets, multiline, trainer):
    """The node height the frontend computes (LiteGraph: 20 px a slot row, 24 px a widget, a
    multiline text box 54 px), plus the loss plot's room on trainers."""
    return 14 + 20 * max(sockets, outputs) + 24 * widgets + 30 * multiline + (LOSS_PLOT_ROOM if trainer else 0)


class Graph:
    def __init__(self, name):
        self.name = name
        self.nodes, self.links = [], []
        self.widgets = {}  # node id -> {input name: value}, what each widget should receive
        self.bottom = {}  # column -> first free y

    def node(self, type_, col, widgets=(), inputs=(), outputs=(), title=None, y=None):
        """Add a node in column `col`, below what the column holds (and not above `y`).

        widgets: (name, value) pairs in the node's input order; a third item is the value the
        editor keeps after the widget (a seed's control, an upload button's kind).
        inputs: every socket the node shows, linked or not, as (name, type).
        """
        nid = len(self.nodes) + 1
        values, named = [], {}
        for name, value, *after in widgets:
            values.append(value)
            named[name] = value
            if after:
                values.append(after[0])
            elif name in SEED_NAMES and type_ not in NO_SEED_CONTROL:
                values.append("fixed")
        multiline = sum(1 for name, *_ in widgets if name in MULTILINE)
        height = estimated_height(len(inputs), len(outputs), len(values), multiline, type_.startswith("SM_Train"))
        top = max(self.bottom.get(col, 0), y or 0)
        self.bottom[col] = top + round(height * (1 + SLACK)) + TITLE + GAP
        node = {"id": nid, "type": type_, "pos": [col * COLUMN, top], "size": [MIN_WIDTH, height], "flags": {},
                "order": nid - 1, "mode": 0,
                "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": type_}, "widgets_values": values}
        if title:
            node["title"] = title
        self.nodes.append(node)
        self.widgets[nid] = named
        return nid

    def row(self):
        """The y below everything placed so far: where a new row of nodes starts."""
        return max(self.bottom.values(), default=0)

    def y(self, nid):
        return self.nodes[nid - 1]["pos"][1]

    def link(self, src, src_slot, dst, input_name):
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        slot = next(i for i, inp in enumerate(d["inputs"]) if inp["name"] == input_name)
        type_ = s["outputs"][src_slot]["type"]
        s["outputs"][src_slot]["links"].append(lid)
        d["inputs"][slot]["link"] = lid
        self.links.append([lid, src, src_slot, dst, slot, type_])

    def linked(self):
        """node id -> {input name: [source node id, output slot]}, as the API format has it."""
        out = {}
        for _, src, slot, dst, dst_slot, _ in self.links:
            out.setdefault(dst, {})[self.nodes[dst - 1]["inputs"][dst_slot]["name"]] = [str(src), slot]
        return out

    def api(self):
        """The API-format graph (what /prompt takes) this workflow is meant to queue: every
        node's widgets by name and its links. The tests check the frontend makes the same."""
        linked = self.linked()
        return {str(n["id"]): {"class_type": n["type"], "inputs": {**self.widgets[n["id"]], **linked.get(n["id"], {})}}
                for n in self.nodes}

    def data(self):
        x1 = max(n["pos"][0] + n["size"][0] for n in self.nodes)
        y1 = max(n["pos"][1] + n["size"][1] for n in self.nodes)
        margin = 40
        scale = round(min(1.0, VIEW[0] / (x1 + 2 * margin), VIEW[1] / (y1 + TITLE + 2 * margin)), 3)
        ds = {"scale": scale, "offset": [margin, TITLE + margin]}
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": ds}, "version": 0.4}

    def text(self):
        return json.dumps(self.data(), indent=1) + "\n"


VM = ("video_model", "SM_VIDEO_MODEL")
MODEL_OUT = [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]
COND = ("CONDITIONING", "CONDITIONING")
SAMPLER_IN = [VM, ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("weight_schedule", "SM_WEIGHT_SCHEDULE")]
KSAMPLER_IN = [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")]


def loader(g, col=0, y=None):
    return g.node("SM_LoadVideoModel", col, [("ckpt_name", BASE), ("motion_module", MOTION), ("dtype", "auto")],
                  outputs=[VM], y=y)


def inject(g, col, weight=1.0, title=None, y=None):
    return g.node("SM_InjectCheckpoint", col, [("ckpt_name", CUSTOM), ("weight", weight), ("inject_text_encoder", True)],
                  inputs=[VM], outputs=[VM], title=title, y=y)


def sampler(g, col, seed=42, steps=25, cfg=7.5, scheduler="euler", y=None):
    return g.node("SM_SampleVideo", col, [
        ("prompt", PROMPT), ("negative_prompt", NEGATIVE), ("seed", seed), ("steps", steps), ("cfg", cfg),
        ("scheduler", scheduler), ("beta_schedule", "linear"), ("width", 512), ("height", 512), ("frames", 16),
        ("context_mode", "none"), ("context_length", 16), ("context_overlap", 4)],
        inputs=SAMPLER_IN, outputs=[("latent", "LATENT"), ("frames", "IMAGE")], y=y)


def save_webp(g, col, prefix, y=None):
    return g.node("SaveAnimatedWEBP", col, [("filename_prefix", prefix), ("fps", 8.0), ("lossless", False),
                                            ("quality", 85), ("method", "default")],
                  inputs=[("images", "IMAGE")], y=y)


def checkpoint(g, col, name, title, y=None):
    return g.node("CheckpointLoaderSimple", col, [("ckpt_name", name)], outputs=MODEL_OUT, title=title, y=y)


def encode(g, col, text, y=None):
    return g.node("CLIPTextEncode", col, [("text", text)], inputs=[("clip", "CLIP")], outputs=[COND], y=y)


def ksampler(g, col, seed, y=None):
    return g.node("KSampler", col, [("seed", seed), ("steps", 25), ("cfg", 7.5), ("sampler_name", "euler"),
                                    ("scheduler", "normal"), ("denoise", 1.0)],
                  inputs=KSAMPLER_IN, outputs=[("LATENT", "LATENT")], y=y)


def training(steps, lr, rank, save_every, name):
    """The widgets every trainer starts with, in their input order."""
    return [("steps", steps), ("learning_rate", lr), ("rank", rank), ("batch", 1), ("frames", 16), ("width", 256),
            ("height", 256), ("seed", 0), ("mixed_precision", "bf16"), ("gradient_checkpointing", True),
            ("save_every", save_every), ("name", name)]


def text_to_video():
    g = Graph("text_to_video_naive_injection")
    load = loader(g)
    inj = inject(g, 1)
    samp = sampler(g, 2)
    save = save_webp(g, 3, "still_moving/naive_injection")
    ckpt = checkpoint(g, 1, CUSTOM, "VAE for native decode")
    dec = g.node("VAEDecode", 3, inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")],
                 y=g.y(ckpt))
    prev = g.node("PreviewImage", 4, inputs=[("images", "IMAGE")], y=g.y(dec))
    g.link(load, 0, inj, "video_model")
    g.link(inj, 0, samp, "video_model")
    g.link(samp, 1, save, "images")
    g.link(samp, 0, dec, "samples")
    g.link(ckpt, 2, dec, "vae")
    g.link(dec, 0, prev, "images")
    return g


def injection_vs_interpolation():
    g = Graph("injection_vs_interpolation")
    load = loader(g)
    for row, (weight, name) in enumerate([(1.0, "naive_injection"), (0.5, "interpolation_0.5")]):
        y = g.row() if row else 0
        inj = inject(g, 1, weight, title=f"Inject ({name})", y=y)
        samp = sampler(g, 2, y=y)
        save = save_webp(g, 3, f"still_moving/{name}", y=y)
        g.link(load, 0, inj, "video_model")
        g.link(inj, 0, samp, "video_model")
        g.link(samp, 1, save, "images")
    return g


MOTION_ADAPTER, SPATIAL_ADAPTERS = "motion/motion_adapter.safetensors", "spatial/spatial_adapters.safetensors"
CLIPS = ("clips", "SM_CLIPS")
ADAPTER = ("adapter", "SM_ADAPTER")
CLIPS_OUT = [CLIPS, ("count", "INT")]
TRAIN_OUT = [ADAPTER, ("path", "STRING"), ("loss_curve", "IMAGE")]


def prior_clips(g, col, prompts, title=None, y=None):
    return g.node("SM_GeneratePriorClips", col, [
        ("prompts", prompts), ("count", 16), ("seed", 0), ("frames", 16), ("width", 256), ("height", 256),
        ("steps", 20), ("cfg", 7.5), ("negative_prompt", "blurry, low quality")],
        inputs=[VM], outputs=CLIPS_OUT, title=title, y=y)


def train_motion_adapter():
    """Base video model -> prior videos made by itself (or your own: Training Clips from Video
    Folder) -> Train Motion Adapter."""
    g = Graph("train_motion_adapter")
    load = loader(g)
    vids = prior_clips(g, 1, "a dog running on the beach\na car driving through a city at night\n"
                             "waves crashing on rocks\na person walking in a park")
    train = g.node("SM_TrainMotionAdapter", 2, training(2000, 1e-4, 8, 500, "motion_adapter") + [("resume_from", "none")],
                   inputs=[VM, ("videos", "SM_CLIPS")], outputs=TRAIN_OUT + [("check", "STRING")])
    prev = g.node("PreviewImage", 3, inputs=[("images", "IMAGE")], title="Loss curve")
    g.link(load, 0, vids, "video_model")
    g.link(load, 0, train, "video_model")
    g.link(vids, 0, train, "videos")
    g.link(train, 2, prev, "images")
    return g


def images_from_checkpoint(g, ckpt, ckpt_title, prompt, seed, title=None):
    """A new row: a checkpoint makes 8 images of ``prompt`` with the native KSampler, turned into
    training clips captioned ``prompt``; returns the clips node."""
    y = g.row()
    ck = checkpoint(g, 0, ckpt, ckpt_title, y=y)
    pos = encode(g, 1, prompt, y=y)
    neg = encode(g, 1, "blurry, low quality")
    empty = g.node("EmptyLatentImage", 1, [("width", 512), ("height", 512), ("batch_size", 8)],
                   outputs=[("LATENT", "LATENT")])
    ks = ksampler(g, 2, seed, y=y)
    dec = g.node("VAEDecode", 3, inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")], y=y)
    clips = g.node("SM_ClipsFromImages", 3, [("caption", prompt)], inputs=[("images", "IMAGE")], outputs=CLIPS_OUT,
                   title=title)
    for a, slot, b, name in [(ck, 1, pos, "clip"), (ck, 1, neg, "clip"), (ck, 0, ks, "model"), (pos, 0, ks, "positive"),
                             (neg, 0, ks, "negative"), (empty, 0, ks, "latent_image"), (ks, 0, dec, "samples"),
                             (ck, 2, dec, "vae"), (dec, 0, clips, "images")]:
        g.link(a, slot, b, name)
    return clips


def train_spatial_adapters():
    """Stills from the customized checkpoint (native KSampler) + prior videos -> Spatial Adapters."""
    g = Graph("train_spatial_adapters")
    load = loader(g)
    inj = inject(g, 1)
    prior = prior_clips(g, 1, "a dog running on the beach\na car driving through a city at night\n"
                              "waves crashing on rocks", title="Prior videos (base model)")
    mad = g.node("SM_LoadAdapter", 2, [("adapter_name", MOTION_ADAPTER)], outputs=[ADAPTER])
    stills = images_from_checkpoint(g, CUSTOM, "Customized checkpoint (makes the stills)", "a photo of sks dog", 7)
    train = g.node("SM_TrainSpatialAdapters", 4, training(1000, 1e-4, 16, 250, "spatial_adapters") + [
        ("prior_ratio", 0.5), ("target_layers", "all"), ("interleaved", False), ("resume_from", "none"),
        ("caption_dropout", 0.0), ("min_timestep", 500)],
        inputs=[VM, ("motion_adapter", "SM_ADAPTER"), ("customized_stills", "SM_CLIPS"), ("prior_videos", "SM_CLIPS")],
        outputs=TRAIN_OUT + [("check", "STRING")])
    prev = g.node("PreviewImage", 5, inputs=[("images", "IMAGE")], title="Loss curve")
    check = g.node("SM_MotionAdapterCheck", 5, [("prompts", "a photo of sks dog"), ("seed", 1000),
                                                ("videos_per_prompt", 2), ("steps", 10), ("cfg", 7.5), ("width", 256),
                                                ("height", 256), ("frames", 16)],
                   inputs=[VM, ("motion_adapter", "SM_ADAPTER")], outputs=[("check", "STRING"), ("motion_kept", "FLOAT")],
                   title="Motion Adapter Check (does it freeze the customized model?)")
    for a, slot, b, name in [(load, 0, inj, "video_model"),
                             (load, 0, prior, "video_model"), (inj, 0, train, "video_model"),
                             (mad, 0, train, "motion_adapter"), (stills, 0, train, "customized_stills"),
                             (prior, 0, train, "prior_videos"), (train, 2, prev, "images"),
                             (inj, 0, check, "video_model"), (mad, 0, check, "motion_adapter")]:
        g.link(a, slot, b, name)
    return g


def attach(g, type_, col, name, *widgets, title=None, y=None):
    return g.node(type_, col, [("adapter_name", name), *widgets], inputs=[VM, ADAPTER], outputs=[VM], title=title, y=y)


def generate_with_adapters():
    """Customized checkpoint injected + Spatial Adapters + Motion Adapter as a motion slider."""
    g = Graph("generate_with_adapters")
    load = loader(g)
    inj = inject(g, 1)
    sp = attach(g, "SM_AttachSpatialAdapters", 2, SPATIAL_ADAPTERS, ("strength", 1.0), ("merge", True))
    mo = attach(g, "SM_AttachMotionAdapter", 3, MOTION_ADAPTER, ("motion_scale", -0.3),
                title="Motion Adapter as motion slider (negative = more motion)")
    samp = sampler(g, 4)
    save = save_webp(g, 5, "still_moving/still_moving")
    g.link(load, 0, inj, "video_model")
    g.link(inj, 0, sp, "video_model")
    g.link(sp, 0, mo, "video_model")
    g.link(mo, 0, samp, "video_model")
    g.link(samp, 1, save, "images")
    return g


CONTROLNET, DRIVING_VIDEO = "control_v11p_sd15_canny.pth", "driving_video.mp4"


def controlnet_driving_video():
    """A driving video's Canny edges (ComfyUI's own Load Video and Canny nodes) steer the
    customized video model through an SD1.5 ControlNet."""
    g = Graph("controlnet_driving_video")
    load = loader(g)
    inj = inject(g, 1)
    apply = g.node("SM_ApplyControlNet", 3, [("strength", 0.8), ("start_percent", 0.0), ("end_percent", 1.0)],
                   inputs=[VM, ("control_net", "SM_CONTROLNET"), ("image", "IMAGE")], outputs=[VM])
    samp = sampler(g, 4)
    save = save_webp(g, 5, "still_moving/controlnet")
    y = g.row()
    video = g.node("LoadVideo", 0, [("file", DRIVING_VIDEO, "image")], outputs=[("VIDEO", "VIDEO")],
                   title="Driving video (in ComfyUI/input)", y=y)
    cn = g.node("SM_LoadControlNet", 0, [("control_net_name", CONTROLNET), ("dtype", "auto")],
                outputs=[("control_net", "SM_CONTROLNET")])
    parts = g.node("GetVideoComponents", 1, inputs=[("video", "VIDEO")],
                   outputs=[("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")], y=y)
    edges = g.node("Canny", 2, [("low_threshold", 0.4), ("high_threshold", 0.8)], inputs=[("image", "IMAGE")],
                   outputs=[("IMAGE", "IMAGE")], y=y)
    prev = g.node("PreviewImage", 3, inputs=[("images", "IMAGE")], title="Control frames", y=y)
    for a, slot, b, name in [(load, 0, inj, "video_model"), (video, 0, parts, "video"), (parts, 0, edges, "image"),
                             (inj, 0, apply, "video_model"), (cn, 0, apply, "control_net"), (edges, 0, apply, "image"),
                             (edges, 0, prev, "images"), (apply, 0, samp, "video_model"), (samp, 1, save, "images")]:
        g.link(a, slot, b, name)
    return g


SCHEDULE = ("weight_schedule", "SM_WEIGHT_SCHEDULE")
FROM_INPUT = "(adapter input)"  # attach nodes: use the adapter linked from the trainer


def customcrafter():
    """CustomCrafter: a subject module trained on reference images (input/still_moving/subject)
    with class images from the base checkpoint for prior preservation, then sampled with the
    paper's Dynamic Weighted Video Sampling (λs 0.4, λl 0.8 for the last 5 of 50 DDIM steps, CFG 12)."""
    g = Graph("customcrafter")
    load = loader(g)
    refs = g.node("SM_ImageFolderClips", 1, [("folder", "still_moving/subject"), ("default_caption", "a photo of sks dog"),
                                             ("max_side", 1024)],
                  outputs=CLIPS_OUT, title="Reference images of the subject")
    train = g.node("SM_TrainSubjectModule", 3, training(1000, 1e-4, 4, 250, "subject_module") + [
        ("prior_ratio", 0.5), ("resume_from", "none")],
        inputs=[VM, ("reference_images", "SM_CLIPS"), ("prior_images", "SM_CLIPS")], outputs=TRAIN_OUT)
    att = attach(g, "SM_AttachSubjectModule", 4, FROM_INPUT, ("strength", 1.0), ("merge", True))
    sch = g.node("SM_WeightSchedule", 4, [("early", 0.4), ("late", 0.8), ("last_steps", 5)], outputs=[SCHEDULE],
                 title="Dynamic Weighted Video Sampling")
    curve = g.node("PreviewImage", 4, inputs=[("images", "IMAGE")], title="Loss curve")
    samp = sampler(g, 5, steps=50, cfg=12.0, scheduler="ddim")
    save = save_webp(g, 6, "still_moving/customcrafter")
    prior = images_from_checkpoint(g, BASE, "Base checkpoint (makes the prior-preservation images)",
                                   "a photo of a dog", 3, title="Prior-preservation images")
    for a, slot, b, name in [(load, 0, train, "video_model"), (refs, 0, train, "reference_images"),
                             (prior, 0, train, "prior_images"),
                             (train, 2, curve, "images"), (load, 0, att, "video_model"), (train, 0, att, "adapter"),
                             (att, 0, samp, "video_model"), (sch, 0, samp, "weight_schedule"), (samp, 1, save, "images")]:
        g.link(a, slot, b, name)
    return g


def customize_a_video():
    """Customize-A-Video: an appearance absorber, then a temporal LoRA on one reference video
    (input/still_moving/reference_video) with the absorber frozen; at inference only the temporal
    LoRA, here on top of an injected DreamBooth checkpoint (custom subject + custom motion)."""
    g = Graph("customize_a_video")
    load = loader(g)
    inj = inject(g, 1)
    att = attach(g, "SM_AttachTemporalLoRA", 3, FROM_INPUT, ("strength", 1.0), ("merge", True),
                 title="Attach Temporal LoRA (chain more of these to combine motions)")
    samp = sampler(g, 4)
    save = save_webp(g, 5, "still_moving/customize_a_video")
    y = g.bottom[1]
    ref = g.node("SM_VideoFolderClips", 0, [("folder", "still_moving/reference_video"), ("frames", 16), ("stride", 1),
                                            ("default_caption", "a dog running"), ("max_side", 1024)],
                 outputs=CLIPS_OUT, title="The reference video", y=y)
    absorb = g.node("SM_TrainAppearanceAbsorber", 1, training(300, 1e-4, 16, 0, "appearance_absorber") + [
        ("resume_from", "none")], inputs=[VM, ("reference_video", "SM_CLIPS")], outputs=TRAIN_OUT, y=y)
    tlora = g.node("SM_TrainTemporalLoRA", 2, training(300, 5e-4, 32, 0, "temporal_lora") + [("resume_from", "none")],
                   inputs=[VM, ("reference_video", "SM_CLIPS"), ("absorber", "SM_ADAPTER")], outputs=TRAIN_OUT, y=y)
    curve = g.node("PreviewImage", 3, inputs=[("images", "IMAGE")], title="Temporal LoRA loss curve")
    for a, slot, b, name in [(load, 0, absorb, "video_model"), (ref, 0, absorb, "reference_video"),
                             (load, 0, tlora, "video_model"), (ref, 0, tlora, "reference_video"),
                             (absorb, 0, tlora, "absorber"), (tlora, 2, curve, "images"),
                             (load, 0, inj, "video_model"), (inj, 0, att, "video_model"), (tlora, 0, att, "adapter"),
                             (att, 0, samp, "video_model"), (samp, 1, save, "images")]:
        g.link(a, slot, b, name)
    return g


MOTION_LORA = "still_moving_motion.safetensors"  # Export Motion Adapter as MotionLoRA's default name


def still_moving_in_animatediff_evolved():
    """The native route for AnimateDiff-Evolved users: the customized checkpoint with the Spatial
    Adapters as a MODEL patch, ADE's Gen2 nodes with the Motion Adapter exported as a MotionLoRA
    (alpha baked in: strength 1), then the stock KSampler. Needs ADE installed, so it is not in
    build() (the tests load only this pack)."""
    g = Graph("still_moving_in_animatediff_evolved")
    g.node("Note", 0, [("text", "Needs ComfyUI-AnimateDiff-Evolved. Export the Motion Adapter once with "
                                       "'Export Motion Adapter as MotionLoRA (Still-Moving)' (alpha -0.3 -> "
                                       f"models/animatediff_motion_lora/{MOTION_LORA}), and load the customized "
                                       "checkpoint the Spatial Adapters were trained for.")], title="Read me")
    ck = checkpoint(g, 0, CUSTOM, "Customized checkpoint")
    sp = g.node("SM_ApplySpatialAdaptersToModel", 1, [("adapter_name", SPATIAL_ADAPTERS), ("strength", 1.0)],
                inputs=[("model", "MODEL"), ADAPTER], outputs=[("model", "MODEL")], y=g.y(ck))
    mm = g.node("ADE_LoadAnimateDiffModel", 1, [("model_name", MOTION)], inputs=[("ad_settings", "AD_SETTINGS")],
                outputs=[("MOTION_MODEL", "MOTION_MODEL_ADE")])
    ml = g.node("ADE_AnimateDiffLoRALoader", 1, [("name", MOTION_LORA), ("strength", 1.0)],
                inputs=[("prev_motion_lora", "MOTION_LORA")], outputs=[("MOTION_LORA", "MOTION_LORA")],
                title="Motion Adapter as MotionLoRA (alpha baked in)")
    apply = g.node("ADE_ApplyAnimateDiffModelSimple", 2, inputs=[
        ("motion_model", "MOTION_MODEL_ADE"), ("motion_lora", "MOTION_LORA"), ("scale_multival", "MULTIVAL"),
        ("effect_multival", "MULTIVAL"), ("ad_keyframes", "AD_KEYFRAMES"), ("per_block", "PER_BLOCK")],
        outputs=[("M_MODELS", "M_MODELS")], y=g.y(mm))
    evo = g.node("ADE_UseEvolvedSampling", 2, [("beta_schedule", "autoselect")], inputs=[
        ("model", "MODEL"), ("m_models", "M_MODELS"), ("context_options", "CONTEXT_OPTIONS"),
        ("sample_settings", "SAMPLE_SETTINGS")], outputs=[("MODEL", "MODEL")], y=g.y(ck))
    pos = encode(g, 1, PROMPT)
    neg = encode(g, 1, NEGATIVE)
    empty = g.node("EmptyLatentImage", 2, [("width", 512), ("height", 512), ("batch_size", 16)],
                   outputs=[("LATENT", "LATENT")])
    ks = ksampler(g, 3, 42, y=g.y(ck))
    dec = g.node("VAEDecode", 4, inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")],
                 y=g.y(ck))
    save = save_webp(g, 4, "still_moving/animatediff_evolved")
    for a, slot, b, name in [(ck, 0, sp, "model"), (sp, 0, evo, "model"), (mm, 0, apply, "motion_model"),
                             (ml, 0, apply, "motion_lora"), (apply, 0, evo, "m_models"), (evo, 0, ks, "model"),
                             (ck, 1, pos, "clip"), (ck, 1, neg, "clip"), (pos, 0, ks, "positive"),
                             (neg, 0, ks, "negative"), (empty, 0, ks, "latent_image"), (ks, 0, dec, "samples"),
                             (ck, 2, dec, "vae"), (dec, 0, save, "images")]:
        g.link(a, slot, b, name)
    return g


def build():
    """Every shipped workflow: file stem -> Graph."""
    graphs = [text_to_video(), injection_vs_interpolation(), train_motion_adapter(), train_spatial_adapters(),
              generate_with_adapters(), controlnet_driving_video(), customcrafter(), customize_a_video()]
    return {g.name: g for g in graphs}


def thumbnails(shots: Path, side=320, quality=80):
    """workflows/<name>.jpg for the template browser: the screenshot letterboxed to a square."""
    from PIL import Image
    for name in sorted(p.stem for p in OUT.glob("*.json")):
        src = shots / f"{name}.png"
        if not src.is_file():
            raise SystemExit(f"make_workflows: no screenshot {src}; run the browser tests first "
                             "(tests/test_workflows_in_browser.py writes them)")
        img = Image.open(src).convert("RGB")
        img.thumbnail((side, side), Image.LANCZOS)
        square = Image.new("RGB", (side, side), img.getpixel((0, 0)))
        square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        dest = OUT / f"{name}.jpg"
        tmp = dest.with_suffix(".jpg.tmp")
        square.save(tmp, "JPEG", quality=quality, optimize=True)
        tmp.replace(dest)
        print("wrote", dest.name, dest.stat().st_size, "bytes")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--thumbnails", type=Path, metavar="DIR", help="make workflows/<name>.jpg from DIR/<name>.png")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    if args.thumbnails:
        thumbnails(args.thumbnails)
    else:
        for name, g in build().items():
            (OUT / f"{name}.json").write_text(g.text())
        g = still_moving_in_animatediff_evolved()
        (OUT / f"{g.name}.json").write_text(g.text())
        print("wrote", *sorted(p.name for p in OUT.glob("*.json")))
