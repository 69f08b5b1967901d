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
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads an SD1.5 ControlNet for the Still-Moving video model."

    def load(self, control_net_name, dtype="auto"):
        path = paths.full_path("controlnet", control_net_name)
        return (controlnet.load_controlnet(path, comfy_glue.default_dtype(dtype)),)


class ApplyControlNet:
    """Like ComfyUI's Apply ControlNet (Advanced), but on the video model, so it works with the
    sampler's prompt text as well as with CONDITIONING; chain several for multi-ControlNet."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL,),
            "control_net": (CONTROLNET,),
            "image": ("IMAGE", {"tooltip": "Control frames from a preprocessor (Canny, depth, pose...): one per "
                                           "video frame; a longer driving video uses its first frames, a single "
                                           "image is used for every frame. Resized (center crop) to the output."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                        "tooltip": "Share of the sampling steps before the ControlNet starts."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                      "tooltip": "Share of the steps after which it stops (a step runs it when it "
                                                 "lies wholly inside [start, end], as diffusers does)."}),
        }}

    RETURN_TYPES = (VIDEO_MODEL,)
    RETURN_NAMES = ("video_model",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = "Drives the video with a ControlNet: its residuals are added to every frame while sampling."

    def apply(self, video_model, control_net, image, strength, start_percent, end_percent):
        return (controlnet.attach(video_model, control_net, image, strength, start_percent, end_percent),)
