"""CustomCrafter and Customize-A-Video nodes: thin glue over ``adapters.customize``."""
from ..adapters import customize, schedule, training
from ..adapters.customize import AppearanceAbsorber, SubjectModule, TemporalLoRA
from .adapter_nodes import ADAPTER, FROM_INPUT, AttachNode, adapter_files
from .training_nodes import CLIPS, Trainer, name_input, resume_input, settings_inputs
from .video_model_nodes import CATEGORY, VIDEO_MODEL

WEIGHT_SCHEDULE = "SM_WEIGHT_SCHEDULE"


def _choices(kind):
    return [FROM_INPUT] + [f for f in adapter_files(kind) if f != "(none)"]


class WeightScheduleNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "early": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 2.0, "step": 0.05,
                                "tooltip": "λs: weight of every spatial customization (subject module, Spatial "
                                           "Adapters, injected checkpoint/LoRA/MODEL) in the early, motion-forming "
                                           "steps. CustomCrafter: 0.4."}),
            "late": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 2.0, "step": 0.05,
                               "tooltip": "λl: their weight in the last steps, which form appearance details. "
                                          "CustomCrafter: 0.8."}),
            "last_steps": ("INT", {"default": 5, "min": 0, "max": 200,
                                   "tooltip": "K: how many final steps run at the late weight (CustomCrafter: 5 of "
                                              "50 DDIM steps). Temporal layers and the prompt are not scaled."}),
        }}

    RETURN_TYPES = (WEIGHT_SCHEDULE,)
    RETURN_NAMES = ("weight_schedule",)
    OUTPUT_TOOLTIPS = ("Connect to the Still-Moving Sampler's weight_schedule input.",)
    FUNCTION = "make"
    CATEGORY = CATEGORY
    DESCRIPTION = ("CustomCrafter's Dynamic Weighted Video Sampling: a low weight for the spatial customizations "
                   "early, a high one for the last K steps. Connect to the sampler's weight_schedule input.")

    def make(self, early, late, last_steps):
        s = schedule.WeightSchedule(float(early), float(late), int(last_steps))
        s.validate()
        return (s,)


class AttachSubjectModule(AttachNode):
    ADAPTER_CLASS = SubjectModule

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The base video model the subject module was trained in."}),
            "adapter_name": (_choices(cls.ADAPTER_CLASS.kind), {
                "tooltip": "A subject module from models/still_moving/subject/, or '(adapter input)' to use the linked "
                           "adapter."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                   "tooltip": "1 as trained; a weight schedule on the sampler multiplies this per "
                                              "step."}),
            "merge": ("BOOLEAN", {"default": True, "tooltip": "Fold into the weights while sampling (no extra cost)."}),
        }, "optional": {"adapter": (ADAPTER, {"tooltip": "A subject module straight from the trainer node."})}}

    OUTPUT_TOOLTIPS = ("The video model drawing the subject; sample it with a Weight Schedule (CustomCrafter).",)
    DESCRIPTION = "Attaches a CustomCrafter subject module (spatial Q/K/V update) to the video model."


class AttachTemporalLoRA(AttachNode):
    ADAPTER_CLASS = TemporalLoRA

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model to give the reference video's motion."}),
            "adapter_name": (_choices(cls.ADAPTER_CLASS.kind), {
                "tooltip": "A temporal LoRA from models/still_moving/temporal/, or '(adapter input)' to use the linked "
                           "adapter."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -5.0, "max": 5.0, "step": 0.05,
                                   "tooltip": "1 as trained; 0.5-1 for a softer copy of the motion. Chain several "
                                              "of these nodes to combine motions: their weight changes add up."}),
            "merge": ("BOOLEAN", {"default": True, "tooltip": "Fold into the weights while sampling (no extra cost)."}),
        }, "optional": {"adapter": (ADAPTER, {"tooltip": "A temporal LoRA straight from the trainer node."})}}

    OUTPUT_TOOLTIPS = ("The video model moving like the reference video.",)
    DESCRIPTION = ("Attaches a Customize-A-Video temporal LoRA (a reference video's motion). Stacks with other "
                   "temporal LoRAs, Spatial Adapters and an injected customized checkpoint.")


class TrainSubjectModule(Trainer):
    @classmethod
    def INPUT_TYPES(cls):
        req = {"video_model": (VIDEO_MODEL, {"tooltip": "The video model the subject module is trained in (usually "
                                                         "the base AnimateDiff model)."}),
               "reference_images": (CLIPS, {"tooltip": "The subject's reference images (Training Clips from Image "
                                                       "Folder / from Images), captioned with a rare trigger word, "
                                                       "e.g. 'a photo of sks dog'. Each becomes a still clip."})}
        req.update(settings_inputs(rank=4, lr=1e-4, steps=1000))
        req["name"] = name_input("subject_module")
        req["prior_ratio"] = ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                        "tooltip": "Share of steps on the prior-preservation images (0.5 is a good "
                                                   "start; 0 without prior_images)."})
        return {"required": req, "optional": {
            "prior_images": (CLIPS, {"tooltip": "Class images for prior preservation (e.g. 'a photo of a dog' made by "
                                                "the base checkpoint); CustomCrafter used about 200."}),
            "resume_from": resume_input(SubjectModule.kind)}, "hidden": {"unique_id": "UNIQUE_ID"}}

    DESCRIPTION = ("CustomCrafter: trains a subject module (rank-4 update on Q/K/V of the spatial self- and cross-"
                   "attention; temporal layers untouched) on still clips of the reference images. The paper also "
                   "learns a new token; this node does not: use a rare word in the captions. Paper: lr 3e-5 for 10k "
                   "steps; these defaults are shorter and not tuned. Saved to models/still_moving/subject/.")

    def train(self, video_model, reference_images, prior_images=None, **inputs):
        result, _ = self._train(SubjectModule, video_model, reference_images, list(prior_images or []), None, inputs)
        return self.outputs(result)


class TrainAppearanceAbsorber(Trainer):
    @classmethod
    def INPUT_TYPES(cls):
        req = {"video_model": (VIDEO_MODEL, {"tooltip": "The base video model."}),
               "reference_video": (CLIPS, {"tooltip": "The one reference video (Training Clips from Video Folder), "
                                                      "captioned with what it shows."})}
        req.update(settings_inputs(rank=16, lr=1e-4, steps=300))
        req["name"] = name_input("appearance_absorber")
        return {"required": req, "optional": {"resume_from": resume_input(AppearanceAbsorber.kind)},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    DESCRIPTION = ("Customize-A-Video, stage 1: an appearance absorber (spatial attention update) trained on the "
                   "reference video's frames as unordered images, temporal layers bypassed. Feed it to Train "
                   "Temporal LoRA; it is not used at inference. Defaults are not from the paper (unpublished). "
                   "Saved to models/still_moving/absorber/.")

    def train(self, video_model, reference_video, **inputs):
        result, _ = self._train(AppearanceAbsorber, video_model, reference_video, [], None, inputs)
        return self.outputs(result)


class TrainTemporalLoRA(Trainer):
    @classmethod
    def INPUT_TYPES(cls):
        req = {"video_model": (VIDEO_MODEL, {"tooltip": "The base video model (the one the absorber was trained in)."}),
               "reference_video": (CLIPS, {"tooltip": "The same reference video, real frames in order."})}
        req.update(settings_inputs(rank=32, lr=5e-4, steps=300))
        req["name"] = name_input("temporal_lora")
        return {"required": req, "optional": {
            "absorber": (ADAPTER, {"tooltip": "From Train Appearance Absorber: attached and frozen during this run so "
                                              "the temporal LoRA learns the motion, not the look. Without it the "
                                              "LoRA also learns the video's appearance."}),
            "resume_from": resume_input(TemporalLoRA.kind)}, "hidden": {"unique_id": "UNIQUE_ID"}}

    DESCRIPTION = ("Customize-A-Video, stage 2: a temporal LoRA (Q/K/V/out of the temporal attention) trained on "
                   "the reference video with the absorber frozen. Defaults follow MotionDirector's public recipe "
                   "(rank 32, lr 5e-4), not tuned here. Saved to models/still_moving/temporal/.")

    def train(self, video_model, reference_video, absorber=None, **inputs):
        model, meta = customize.absorbed(video_model, absorber)  # merged: nothing of the absorber trains
        result, _ = self._train(TemporalLoRA, model, reference_video, [], None, inputs, metadata=meta)
        return self.outputs(result)

