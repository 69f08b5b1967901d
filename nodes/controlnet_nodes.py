"""ControlNet nodes: a driving video's control frames (depth, edges, pose from any preprocessor)
steer the customized video model. Glue over ``adapters.controlnet``."""
from ..adapters import controlnet
from . import comfy_glue, paths
from .video_model_nodes import CATEGORY, VIDEO_MODEL

CONTROLNET = "SM_CONTROLNET"


class LoadControlNet:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "control_net_name": (paths.files("controlnet"), {
                "tooltip": "An SD1.5 ControlNet from models/controlnet: lllyasviel's control_v11*_sd15_* "
                           "(.pth/.safetensors) or a diffusers ControlNetModel (pick its "
                           "diffusion_pytorch_model.safetensors). SDXL ControlNets, T2I-Adapters and "
                           "Control-LoRAs are refused."}),
            "dtype": (["auto", "fp32", "fp16", "bf16"], {
                "default": "auto", "tooltip": "auto: fp16/bf16 on a CUDA GPU, fp32 on the CPU."}),
        }}

    RETURN_TYPES = (CONTROLNET,)
    RETURN_NAMES = ("control_net",)
    OUTPUT_TOOLTIPS = ("The ControlNet, for Apply ControlNet to Video Model.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads an SD1.5 ControlNet for the Still-Moving video model."

    @classmethod
    def IS_CHANGED(cls, control_net_name=None, **_):
        return paths.fingerprint("controlnet", control_net_name)

    def load(self, control_net_name, dtype="auto"):
        path = paths.full_path("controlnet", control_net_name)
        return (controlnet.load_controlnet(path, comfy_glue.default_dtype(dtype)),)


class ApplyControlNet:
    """Like ComfyUI's Apply ControlNet (Advanced), but on the video model, so it works with the
    sampler's prompt text as well as with CONDITIONING; chain several for multi-ControlNet."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model to steer, with its customization "
                                                     "attached."}),
            "control_net": (CONTROLNET, {"tooltip": "From Load ControlNet (SD1.5); its kind must match the "
                                                    "control frames (Canny edges for a canny ControlNet, ...)."}),
            "image": ("IMAGE", {"tooltip": "Control frames from a preprocessor (Canny, depth, pose...): one per "
                                           "video frame; a longer driving video uses its first frames, a single "
                                           "image is used for every frame. Resized (center crop) to the output."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "How strongly the control frames steer the video: 1 as trained, "
                                              "0.5-0.8 leaves the prompt more freedom."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                        "tooltip": "Share of the sampling steps before the ControlNet starts; 0 "
                                                   "steers from the first step."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                      "tooltip": "Share of the steps after which it stops; 1 steers to the end, "
                                                 "0.6-0.8 lets the last steps refine details freely."}),
        }}

    RETURN_TYPES = (VIDEO_MODEL,)
    RETURN_NAMES = ("video_model",)
    OUTPUT_TOOLTIPS = ("The video model steered by the control frames: connect it to the sampler, or to another "
                       "Apply ControlNet to combine several.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = "Drives the video with a ControlNet: its residuals are added to every frame while sampling."

    def apply(self, video_model, control_net, image, strength, start_percent, end_percent):
        return (controlnet.attach(video_model, control_net, image, strength, start_percent, end_percent),)
