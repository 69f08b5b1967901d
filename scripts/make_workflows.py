"""Writes the example workflows in workflows/ (ComfyUI's UI format, as the editor saves it).

Generated so node ids, links and widget order stay consistent with the nodes' INPUT_TYPES;
tests convert each file to API format and execute it on tiny models.
"""
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "workflows"
BASE, MOTION, CUSTOM = "v1-5-pruned-emaonly.safetensors", "mm_sd_v15_v2.ckpt", "my_dreambooth_subject.safetensors"
PROMPT = "a photo of sks dog running through a field of flowers, best quality"
NEGATIVE = "blurry, low quality, deformed"


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, type_, pos, widgets=(), inputs=(), outputs=(), title=None):
        nid = len(self.nodes) + 1
        node = {"id": nid, "type": type_, "pos": list(pos), "size": [320, 120], "flags": {}, "order": nid - 1,
                "mode": 0, "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return nid

    def link(self, src, src_slot, dst, input_name):
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        slot = next(i for i, inp in enumerate(d["inputs"]) if inp["name"] == input_name)
        type_ = s["outputs"][src_slot]["type"]
        s["outputs"][src_slot]["links"].append(lid)
        d["inputs"][slot]["link"] = lid
        self.links.append([lid, src, src_slot, dst, slot, type_])

    def save(self, name):
        data = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}
        (OUT / name).write_text(json.dumps(data, indent=1) + "\n")


VM = ("video_model", "SM_VIDEO_MODEL")


def loader(g, y):
    return g.node("SM_LoadVideoModel", (0, y), [BASE, MOTION, "auto"], outputs=[VM])


def sampler(g, pos, seed=42, frames=16):
    return g.node("SM_SampleVideo", pos, [PROMPT, NEGATIVE, seed, "fixed", 25, 7.5, "euler", "linear",
                                          512, 512, frames, "none", 16, 4],
                  inputs=[VM], outputs=[("latent", "LATENT"), ("frames", "IMAGE")])


def save_webp(g, pos, prefix):
    return g.node("SaveAnimatedWEBP", pos, [prefix, 8.0, False, 85, "default"], inputs=[("images", "IMAGE")])


def text_to_video():
    g = Graph()
    load = loader(g, 0)
    inj = g.node("SM_InjectCheckpoint", (360, 0), [CUSTOM, 1.0, True], inputs=[VM], outputs=[VM])
    samp = sampler(g, (720, 0))
    save = save_webp(g, (1080, 0), "still_moving/naive_injection")
    ckpt = g.node("CheckpointLoaderSimple", (360, 300), [CUSTOM],
                  outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], title="VAE for native decode")
    dec = g.node("VAEDecode", (1080, 300), inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")])
    prev = g.node("PreviewImage", (1400, 300), inputs=[("images", "IMAGE")])
    g.link(load, 0, inj, "video_model")
    g.link(inj, 0, samp, "video_model")
    g.link(samp, 1, save, "images")
    g.link(samp, 0, dec, "samples")
    g.link(ckpt, 2, dec, "vae")
    g.link(dec, 0, prev, "images")
    g.save("text_to_video_naive_injection.json")


def injection_vs_interpolation():
    g = Graph()
    load = loader(g, 0)
    for row, (weight, name) in enumerate([(1.0, "naive_injection"), (0.5, "interpolation_0.5")]):
        y = row * 420
        inj = g.node("SM_InjectCheckpoint", (360, y), [CUSTOM, weight, True], inputs=[VM], outputs=[VM],
                     title=f"Inject ({name})")
        samp = sampler(g, (720, y))
        save = save_webp(g, (1080, y), f"still_moving/{name}")
        g.link(load, 0, inj, "video_model")
        g.link(inj, 0, samp, "video_model")
        g.link(samp, 1, save, "images")
    g.save("injection_vs_interpolation.json")


MOTION_ADAPTER, SPATIAL_ADAPTERS = "motion/motion_adapter.safetensors", "spatial/spatial_adapters.safetensors"
CLIPS = ("clips", "SM_CLIPS")
ADAPTER = ("adapter", "SM_ADAPTER")
TRAIN_OUT = [ADAPTER, ("path", "STRING"), ("loss_curve", "IMAGE")]


def train_motion_adapter():
    """Base video model -> prior videos made by itself (or your own: Training Clips from Video
    Folder) -> Train Motion Adapter."""
    g = Graph()
    load = loader(g, 0)
    vids = g.node("SM_GeneratePriorClips", (360, 0), [
        "a dog running on the beach\na car driving through a city at night\nwaves crashing on rocks\n"
        "a person walking in a park", 16, 0, "fixed", 16, 256, 256, 20, 7.5, "blurry, low quality"],
        inputs=[VM], outputs=[CLIPS, ("count", "INT")])
    train = g.node("SM_TrainMotionAdapter", (720, 0), [2000, 1e-4, 8, 1, 16, 256, 256, 0, "bf16", True, 500,
                                                       "motion_adapter", "none"],
                   inputs=[VM, ("videos", "SM_CLIPS")], outputs=TRAIN_OUT)
    prev = g.node("PreviewImage", (1080, 0), inputs=[("images", "IMAGE")], title="Loss curve")
    g.link(load, 0, vids, "video_model")
    g.link(load, 0, train, "video_model")
    g.link(vids, 0, train, "videos")
    g.link(train, 2, prev, "images")
    g.save("train_motion_adapter.json")


def train_spatial_adapters():
    """Stills from the customized checkpoint (native KSampler) + prior videos -> Spatial Adapters."""
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", (0, 400), [CUSTOM], outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
                title="Customized checkpoint (makes the stills)")
    pos = g.node("CLIPTextEncode", (360, 400), ["a photo of sks dog"], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")])
    neg = g.node("CLIPTextEncode", (360, 560), ["blurry, low quality"], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")])
    empty = g.node("EmptyLatentImage", (360, 720), [512, 512, 8], outputs=[("LATENT", "LATENT")])
    ks = g.node("KSampler", (720, 400), [7, "fixed", 25, 7.5, "euler", "normal", 1.0],
                inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                        ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")])
    dec = g.node("VAEDecode", (1080, 400), inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")])
    stills = g.node("SM_ClipsFromImages", (1080, 560), ["a photo of sks dog"], inputs=[("images", "IMAGE")],
                    outputs=[CLIPS, ("count", "INT")])
    load = loader(g, 0)
    inj = g.node("SM_InjectCheckpoint", (360, 0), [CUSTOM, 1.0, True], inputs=[VM], outputs=[VM])
    prior = g.node("SM_GeneratePriorClips", (360, 160), [
        "a dog running on the beach\na car driving through a city at night\nwaves crashing on rocks", 16, 0,
        "fixed", 16, 256, 256, 20, 7.5, "blurry, low quality"], inputs=[VM], outputs=[CLIPS, ("count", "INT")],
        title="Prior videos (base model)")
    mad = g.node("SM_LoadAdapter", (720, 160), [MOTION_ADAPTER], outputs=[ADAPTER])
    train = g.node("SM_TrainSpatialAdapters", (1440, 0), [1000, 1e-4, 16, 1, 16, 256, 256, 0, "bf16", True, 250,
                                                          "spatial_adapters", 0.5, "all", False, "none", 0.0],
                   inputs=[VM, ("motion_adapter", "SM_ADAPTER"), ("customized_stills", "SM_CLIPS"),
                           ("prior_videos", "SM_CLIPS")], outputs=TRAIN_OUT)
    prev = g.node("PreviewImage", (1800, 0), inputs=[("images", "IMAGE")], title="Loss curve")
    for a, slot, b, name in [(ck, 1, pos, "clip"), (ck, 1, neg, "clip"), (ck, 0, ks, "model"), (pos, 0, ks, "positive"),
                             (neg, 0, ks, "negative"), (empty, 0, ks, "latent_image"), (ks, 0, dec, "samples"),
                             (ck, 2, dec, "vae"), (dec, 0, stills, "images"), (load, 0, inj, "video_model"),
                             (load, 0, prior, "video_model"), (inj, 0, train, "video_model"),
                             (mad, 0, train, "motion_adapter"), (stills, 0, train, "customized_stills"),
                             (prior, 0, train, "prior_videos"), (train, 2, prev, "images")]:
        g.link(a, slot, b, name)
    g.save("train_spatial_adapters.json")


def generate_with_adapters():
    """Customized checkpoint injected + Spatial Adapters + Motion Adapter as a motion slider."""
    g = Graph()
    load = loader(g, 0)
    inj = g.node("SM_InjectCheckpoint", (360, 0), [CUSTOM, 1.0, True], inputs=[VM], outputs=[VM])
    sp = g.node("SM_AttachSpatialAdapters", (720, 0), [SPATIAL_ADAPTERS, 1.0, True], inputs=[VM], outputs=[VM])
    mo = g.node("SM_AttachMotionAdapter", (1080, 0), [MOTION_ADAPTER, -0.3], inputs=[VM], outputs=[VM],
                title="Motion Adapter as motion slider (negative = more motion)")
    samp = sampler(g, (1440, 0))
    save = save_webp(g, (1800, 0), "still_moving/still_moving")
    g.link(load, 0, inj, "video_model")
    g.link(inj, 0, sp, "video_model")
    g.link(sp, 0, mo, "video_model")
    g.link(mo, 0, samp, "video_model")
    g.link(samp, 1, save, "images")
    g.save("generate_with_adapters.json")


CONTROLNET, DRIVING_VIDEO = "control_v11p_sd15_canny.pth", "driving_video.mp4"


def controlnet_driving_video():
    """A driving video's Canny edges (ComfyUI's own Load Video and Canny nodes) steer the
    customized video model through an SD1.5 ControlNet."""
    g = Graph()
    load = loader(g, 0)
    inj = g.node("SM_InjectCheckpoint", (360, 0), [CUSTOM, 1.0, True], inputs=[VM], outputs=[VM])
    video = g.node("LoadVideo", (0, 300), [DRIVING_VIDEO, "image"], outputs=[("VIDEO", "VIDEO")],
                   title="Driving video (in ComfyUI/input)")
    parts = g.node("GetVideoComponents", (0, 520), inputs=[("video", "VIDEO")],
                   outputs=[("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")])
    edges = g.node("Canny", (360, 300), [0.4, 0.8], inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")])
    cn = g.node("SM_LoadControlNet", (360, 520), [CONTROLNET, "auto"], outputs=[("control_net", "SM_CONTROLNET")])
    apply = g.node("SM_ApplyControlNet", (720, 0), [0.8, 0.0, 1.0],
                   inputs=[VM, ("control_net", "SM_CONTROLNET"), ("image", "IMAGE")], outputs=[VM])
    samp = sampler(g, (1080, 0))
    save = save_webp(g, (1440, 0), "still_moving/controlnet")
    prev = g.node("PreviewImage", (720, 300), inputs=[("images", "IMAGE")], title="Control frames")
    for a, slot, b, name in [(load, 0, inj, "video_model"), (video, 0, parts, "video"), (parts, 0, edges, "image"),
                             (inj, 0, apply, "video_model"), (cn, 0, apply, "control_net"), (edges, 0, apply, "image"),
                             (edges, 0, prev, "images"), (apply, 0, samp, "video_model"), (samp, 1, save, "images")]:
        g.link(a, slot, b, name)
    g.save("controlnet_driving_video.json")


SCHEDULE = ("weight_schedule", "SM_WEIGHT_SCHEDULE")
FROM_INPUT = "(adapter input)"  # attach nodes: use the adapter linked from the trainer


def customcrafter():
    """CustomCrafter: a subject module trained on reference images (input/still_moving/subject)
    with class images from the base checkpoint for prior preservation, then sampled with the
    paper's Dynamic Weighted Video Sampling (λs 0.4, λl 0.8 for the last 5 of 50 DDIM steps, CFG 12)."""
    g = Graph()
    load = loader(g, 0)
    refs = g.node("SM_ImageFolderClips", (360, 0), ["still_moving/subject", "a photo of sks dog", 1024],
                  outputs=[CLIPS, ("count", "INT")], title="Reference images of the subject")
    ck = g.node("CheckpointLoaderSimple", (0, 300), [BASE], outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
                title="Base checkpoint (makes the prior-preservation images)")
    pos = g.node("CLIPTextEncode", (360, 300), ["a photo of a dog"], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")])
    neg = g.node("CLIPTextEncode", (360, 460), ["blurry, low quality"], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")])
    empty = g.node("EmptyLatentImage", (360, 620), [512, 512, 8], outputs=[("LATENT", "LATENT")])
    ks = g.node("KSampler", (720, 300), [3, "fixed", 25, 7.5, "euler", "normal", 1.0],
                inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                        ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")])
    dec = g.node("VAEDecode", (1080, 300), inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")])
    prior = g.node("SM_ClipsFromImages", (1080, 460), ["a photo of a dog"], inputs=[("images", "IMAGE")],
                   outputs=[CLIPS, ("count", "INT")], title="Prior-preservation images")
    train = g.node("SM_TrainSubjectModule", (1440, 0), [1000, 1e-4, 4, 1, 16, 256, 256, 0, "bf16", True, 250,
                                                        "subject_module", 0.5, "none"],
                   inputs=[VM, ("reference_images", "SM_CLIPS"), ("prior_images", "SM_CLIPS")], outputs=TRAIN_OUT)
    curve = g.node("PreviewImage", (1800, 300), inputs=[("images", "IMAGE")], title="Loss curve")
    att = g.node("SM_AttachSubjectModule", (1800, 0), [FROM_INPUT, 1.0, True], inputs=[VM, ADAPTER], outputs=[VM])
    sch = g.node("SM_WeightSchedule", (1800, 160), [0.4, 0.8, 5], outputs=[SCHEDULE],
                 title="Dynamic Weighted Video Sampling")
    samp = g.node("SM_SampleVideo", (2160, 0), [PROMPT, NEGATIVE, 42, "fixed", 50, 12.0, "ddim", "linear", 512, 512,
                                                16, "none", 16, 4],
                  inputs=[VM, SCHEDULE], outputs=[("latent", "LATENT"), ("frames", "IMAGE")])
    save = save_webp(g, (2520, 0), "still_moving/customcrafter")
    for a, slot, b, name in [(load, 0, train, "video_model"), (refs, 0, train, "reference_images"),
                             (ck, 1, pos, "clip"), (ck, 1, neg, "clip"), (ck, 0, ks, "model"), (pos, 0, ks, "positive"),
                             (neg, 0, ks, "negative"), (empty, 0, ks, "latent_image"), (ks, 0, dec, "samples"),
                             (ck, 2, dec, "vae"), (dec, 0, prior, "images"), (prior, 0, train, "prior_images"),
                             (train, 2, curve, "images"), (load, 0, att, "video_model"), (train, 0, att, "adapter"),
                             (att, 0, samp, "video_model"), (sch, 0, samp, "weight_schedule"), (samp, 1, save, "images")]:
        g.link(a, slot, b, name)
    g.save("customcrafter.json")


def customize_a_video():
    """Customize-A-Video: an appearance absorber, then a temporal LoRA on one reference video
    (input/still_moving/reference_video) with the absorber frozen; at inference only the temporal
    LoRA, here on top of an injected DreamBooth checkpoint (custom subject + custom motion)."""
    g = Graph()
    load = loader(g, 0)
    ref = g.node("SM_VideoFolderClips", (0, 300), ["still_moving/reference_video", 16, 1, "a dog running", 1024],
                 outputs=[CLIPS, ("count", "INT")], title="The reference video")
    absorb = g.node("SM_TrainAppearanceAbsorber", (360, 300), [300, 1e-4, 16, 1, 16, 256, 256, 0, "bf16", True, 0,
                                                               "appearance_absorber", "none"],
                    inputs=[VM, ("reference_video", "SM_CLIPS")], outputs=TRAIN_OUT)
    tlora = g.node("SM_TrainTemporalLoRA", (720, 300), [300, 5e-4, 32, 1, 16, 256, 256, 0, "bf16", True, 0,
                                                        "temporal_lora", "none"],
                   inputs=[VM, ("reference_video", "SM_CLIPS"), ("absorber", "SM_ADAPTER")], outputs=TRAIN_OUT)
    curve = g.node("PreviewImage", (1080, 300), inputs=[("images", "IMAGE")], title="Temporal LoRA loss curve")
    inj = g.node("SM_InjectCheckpoint", (360, 0), [CUSTOM, 1.0, True], inputs=[VM], outputs=[VM])
    att = g.node("SM_AttachTemporalLoRA", (1080, 0), [FROM_INPUT, 1.0, True], inputs=[VM, ADAPTER], outputs=[VM],
                 title="Attach Temporal LoRA (chain more of these to combine motions)")
    samp = sampler(g, (1440, 0))
    save = save_webp(g, (1800, 0), "still_moving/customize_a_video")
    for a, slot, b, name in [(load, 0, absorb, "video_model"), (ref, 0, absorb, "reference_video"),
                             (load, 0, tlora, "video_model"), (ref, 0, tlora, "reference_video"),
                             (absorb, 0, tlora, "absorber"), (tlora, 2, curve, "images"),
                             (load, 0, inj, "video_model"), (inj, 0, att, "video_model"), (tlora, 0, att, "adapter"),
                             (att, 0, samp, "video_model"), (samp, 1, save, "images")]:
        g.link(a, slot, b, name)
    g.save("customize_a_video.json")


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    text_to_video()
    injection_vs_interpolation()
    train_motion_adapter()
    train_spatial_adapters()
    generate_with_adapters()
    controlnet_driving_video()
    customcrafter()
    customize_a_video()
    print("wrote", *sorted(p.name for p in OUT.glob("*.json")))
