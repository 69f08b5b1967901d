"""Training clips for the adapters: stills from the graph, image/video folders, generated priors."""
import hashlib
import os

from ..adapters import data, files
from . import comfy_glue
from .video_model_nodes import VIDEO_MODEL

CLIPS = "SM_CLIPS"
CATEGORY = "Still-Moving/training"
RETURNS = (CLIPS, "INT")
RETURN_NAMES = ("clips", "count")
OUTPUT_TOOLTIPS = ("Training clips with their captions, for a trainer node or Merge Training Clips.",
                   "How many clips there are, to check that every file was read.")
MAX_SIDE = ("INT", {"default": 1024, "min": 0, "max": 8192, "step": 8,
                    "tooltip": "Frames larger than this (longest side, pixels) are scaled down when read, so a "
                               "folder of HD videos does not fill the memory. Training crops and resizes them to "
                               "its own resolution anyway; keep this above it. 0 keeps the full size."})


def _input_folder(folder):
    """A folder typed by the user, inside ComfyUI's input directory and nowhere else."""
    import folder_paths
    root = folder_paths.get_input_directory()
    try:
        path = files.safe_child(root, folder.strip())
    except ValueError:
        raise ValueError(f"folder '{folder}' must be a path inside ComfyUI's input folder ({root}), "
                         "e.g. still_moving/videos; absolute paths and '..' are refused.") from None
    if not path.is_dir():
        raise ValueError(f"folder '{folder}' not found in ComfyUI's input folder ({root}): create {path} "
                         "and put your files in it.")
    return path


def _fingerprint(folder):
    """Names, sizes and dates of everything in the folder (two levels), so ComfyUI re-reads it
    when files are added or changed instead of reusing its cached output."""
    try:
        import folder_paths
        root = files.safe_child(folder_paths.get_input_directory(), folder.strip())
        h = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if os.path.relpath(dirpath, root) != ".":
                dirnames[:] = []  # clips are files or sub-folders of frames: two levels
            for name in sorted(filenames):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    except (OSError, ValueError) as e:
        return f"error: {e}"


class ClipsNode:
    """What every node making training clips returns."""
    RETURN_TYPES = RETURNS
    RETURN_NAMES = RETURN_NAMES
    OUTPUT_TOOLTIPS = OUTPUT_TOOLTIPS
    CATEGORY = CATEGORY


class FolderClips(ClipsNode):
    """Clips read from a folder under ComfyUI's input folder, re-read when its files change."""
    FUNCTION = "load"

    @classmethod
    def IS_CHANGED(cls, folder, **_):
        return _fingerprint(folder)


class ClipsFromImages(ClipsNode):
    """Stills from the graph, e.g. images made by the customized checkpoint with the native KSampler."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Still images of the customized subject or style, e.g. generated "
                                            "by the customized SD1.5 checkpoint with KSampler. Each becomes a "
                                            "frozen (motionless) video for training the Spatial Adapters."}),
            "caption": ("STRING", {"multiline": True, "default": "a photo of sks dog",
                                   "tooltip": "The prompt the images show (use the customization's trigger "
                                              "words). One line per image if the number of lines equals the "
                                              "number of images, otherwise the whole text is used for all."}),
        }}

    FUNCTION = "make"
    DESCRIPTION = "Turns an IMAGE batch into training clips (one still per image) with captions."

    def make(self, images, caption):
        lines = [line.strip() for line in caption.splitlines() if line.strip()]
        captions = lines if len(lines) == images.shape[0] else caption.strip()
        clips = data.clips_from_images(images, captions)
        return (clips, len(clips))


class ImageFolderClips(FolderClips):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "still_moving/images",
                                  "tooltip": "A folder inside ComfyUI's input folder holding .png/.jpg/.jpeg/.webp "
                                             "stills of the customized subject or style. A same-name .txt beside "
                                             "an image is its caption."}),
            "default_caption": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "Caption for images without a .txt file. Captions should "
                                                      "describe the image with the customization's trigger words."}),
            "max_side": MAX_SIDE,
        }}

    DESCRIPTION = "Reads still images (and .txt captions) from a folder under ComfyUI's input folder."

    def load(self, folder, default_caption, max_side=1024):
        clips = data.load_image_folder(_input_folder(folder), default_caption.strip(), max_side or None)
        return (clips, len(clips))


class VideoFolderClips(FolderClips):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "still_moving/videos",
                                  "tooltip": "A folder inside ComfyUI's input folder holding natural videos "
                                             "(.mp4/.webm/.mov/.mkv/.gif, animated .webp) or sub-folders of "
                                             "frame images, for the Motion Adapter or as prior videos; the paper "
                                             "used about 40. A same-name .txt is the caption."}),
            "frames": ("INT", {"default": 16, "min": 2, "max": 64,
                               "tooltip": "Frames kept per clip, from the start. Use the number of frames you "
                                          "will train with (16 is what AnimateDiff was trained on). Shorter "
                                          "videos keep the frames they have."}),
            "stride": ("INT", {"default": 1, "min": 1, "max": 30,
                               "tooltip": "Keep one frame every `stride` frames: 2-4 gives more motion per clip "
                                          "from high-frame-rate footage (AnimateDiff was trained on about 8 fps)."}),
            "default_caption": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "Caption for videos without a .txt file; describe what "
                                                      "happens in them."}),
            "max_side": MAX_SIDE,
        }}

    DESCRIPTION = "Reads video clips (and .txt captions) from a folder under ComfyUI's input folder."

    def load(self, folder, frames, stride, default_caption, max_side=1024):
        clips = data.load_video_folder(_input_folder(folder), frames, stride, default_caption.strip(),
                                       max_side or None)
        return (clips, len(clips))


class GeneratePriorClips(ClipsNode):
    """Natural prior videos from the base video model, when the user has no videos."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The plain (NOT customized) AnimateDiff model: these videos "
                                                     "keep what the video model already knows (motion, varied "
                                                     "scenes) while the adapters learn the customization."}),
            "prompts": ("STRING", {"multiline": True,
                                   "default": "a dog running on the beach\nwaves crashing on rocks at sunset\n"
                                              "a city street with cars at night\nleaves blowing in the wind\n"
                                              "a person walking in a park\nclouds moving over mountains",
                                   "tooltip": "One prompt per line, used in turn. Varied, ordinary scenes with "
                                              "motion; include the subject's class (e.g. 'a dog') but not its "
                                              "trigger word."}),
            "count": ("INT", {"default": 16, "min": 1, "max": 1000,
                              "tooltip": "How many videos to make. The paper used about 40 natural videos; "
                                         "more costs generation time, fewer weakens prior preservation."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Video i uses seed + i."}),
            "frames": ("INT", {"default": 16, "min": 2, "max": 32,
                               "tooltip": "Frames per video; the number you will train with."}),
            "width": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                              "tooltip": "Generate at the training resolution: larger only costs time, the "
                                         "trainer resizes anyway."}),
            "height": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                               "tooltip": "Generate at the training resolution."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Sampling steps per video."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.1,
                              "tooltip": "Classifier-free guidance; 7-8 gives clean natural videos."}),
        }, "optional": {
            "negative_prompt": ("STRING", {"multiline": True, "default": "blurry, low quality, watermark, text",
                                           "tooltip": "What the prior videos should avoid."}),
        }}

    FUNCTION = "generate"
    DESCRIPTION = ("Makes natural videos with the base video model for prior preservation, when you have "
                   "no videos of your own.")

    def generate(self, video_model, prompts, count, seed, frames, width, height, steps, cfg,
                 negative_prompt="blurry, low quality, watermark, text"):
        device = comfy_glue.device()
        comfy_glue.make_room()
        with video_model.on_device(device):
            clips = data.generate_prior_clips(video_model, prompts, count, seed, frames, width, height,
                                              steps=steps, cfg=cfg, negative_prompt=negative_prompt,
                                              callback=comfy_glue.step_callback(count * steps))
        return (clips, len(clips))


class MergeClips(ClipsNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clips_a": (CLIPS, {"tooltip": "First set of clips."}),
            "clips_b": (CLIPS, {"tooltip": "Appended after the first, e.g. your own videos plus generated ones."}),
        }}

    FUNCTION = "merge"
    DESCRIPTION = "Joins two sets of training clips into one."

    def merge(self, clips_a, clips_b):
        clips = list(clips_a) + list(clips_b)
        return (clips, len(clips))
