"""ComfyUI glue: maps node inputs to ``adapters`` calls and back."""
from . import paths
from .adapter_nodes import AttachMotionAdapter, AttachSpatialAdapters, LoadAdapter
from .controlnet_nodes import ApplyControlNet, LoadControlNet
from .customization_nodes import (AttachSubjectModule, AttachTemporalLoRA, TrainAppearanceAbsorber,
                                  TrainSubjectModule, TrainTemporalLoRA, WeightScheduleNode)
from .dataset_nodes import ClipsFromImages, GeneratePriorClips, ImageFolderClips, MergeClips, VideoFolderClips
from .export_nodes import ExportMergedCheckpoint, ExportMotionLoRA, ExportSpatialLoRA
from .model_patch_nodes import ApplySpatialAdaptersToModel
from .report_nodes import InjectionReport, MotionAdapterCheck
from .sampler_nodes import SampleVideo
from .score_nodes import ScoreVideo
from .training_nodes import TrainMotionAdapter, TrainSpatialAdapters
from .video_model_nodes import InjectCheckpoint, InjectComfyModel, InjectLoRA, LoadMotionLoRA, LoadVideoModel

paths.register()

_NODES = {
    "SM_LoadVideoModel": (LoadVideoModel, "Load AnimateDiff Video Model"),
    "SM_LoadMotionLoRA": (LoadMotionLoRA, "Load MotionLoRA"),
    "SM_InjectCheckpoint": (InjectCheckpoint, "Inject Customized Checkpoint"),
    "SM_InjectLoRA": (InjectLoRA, "Inject LoRA"),
    "SM_InjectComfyModel": (InjectComfyModel, "Inject MODEL (customized)"),
    "SM_SampleVideo": (SampleVideo, "Still-Moving Sampler"),
    "SM_AttachMotionAdapter": (AttachMotionAdapter, "Attach Motion Adapter"),
    "SM_AttachSpatialAdapters": (AttachSpatialAdapters, "Attach Spatial Adapters"),
    "SM_LoadAdapter": (LoadAdapter, "Load Still-Moving Adapter"),
    "SM_TrainMotionAdapter": (TrainMotionAdapter, "Train Motion Adapter"),
    "SM_TrainSpatialAdapters": (TrainSpatialAdapters, "Train Spatial Adapters"),
    "SM_ClipsFromImages": (ClipsFromImages, "Training Clips from Images"),
    "SM_ImageFolderClips": (ImageFolderClips, "Training Clips from Image Folder"),
    "SM_VideoFolderClips": (VideoFolderClips, "Training Clips from Video Folder"),
    "SM_GeneratePriorClips": (GeneratePriorClips, "Generate Prior Videos"),
    "SM_MergeClips": (MergeClips, "Merge Training Clips"),
    "SM_LoadControlNet": (LoadControlNet, "Load ControlNet (SD1.5)"),
    "SM_ApplyControlNet": (ApplyControlNet, "Apply ControlNet to Video Model"),
    "SM_ScoreVideo": (ScoreVideo, "Score Video (motion, CLIP-T, CLIP-I)"),
    "SM_WeightSchedule": (WeightScheduleNode, "Weight Schedule (CustomCrafter)"),
    "SM_TrainSubjectModule": (TrainSubjectModule, "Train Subject Module (CustomCrafter)"),
    "SM_AttachSubjectModule": (AttachSubjectModule, "Attach Subject Module (CustomCrafter)"),
    "SM_TrainAppearanceAbsorber": (TrainAppearanceAbsorber, "Train Appearance Absorber (Customize-A-Video)"),
    "SM_TrainTemporalLoRA": (TrainTemporalLoRA, "Train Temporal LoRA (Customize-A-Video)"),
    "SM_AttachTemporalLoRA": (AttachTemporalLoRA, "Attach Temporal LoRA (Customize-A-Video)"),
    "SM_ApplySpatialAdaptersToModel": (ApplySpatialAdaptersToModel, "Apply Spatial Adapters to MODEL"),
    "SM_ExportSpatialLoRA": (ExportSpatialLoRA, "Export Spatial Adapters as LoRA"),
    "SM_ExportMotionLoRA": (ExportMotionLoRA, "Export Motion Adapter as MotionLoRA"),
    "SM_ExportMergedCheckpoint": (ExportMergedCheckpoint, "Export Merged Checkpoint"),
    "SM_InjectionReport": (InjectionReport, "Injection Report (feature shift)"),
    "SM_MotionAdapterCheck": (MotionAdapterCheck, "Motion Adapter Check (does it freeze?)"),
}
NODE_CLASS_MAPPINGS = {k: v[0] for k, v in _NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: f"{v[1]} (Still-Moving)" for k, v in _NODES.items()}
