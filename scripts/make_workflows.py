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


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    text_to_video()
    injection_vs_interpolation()
    print("wrote", *sorted(p.name for p in OUT.glob("*.json")))
