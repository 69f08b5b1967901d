"""The pack's video model on the ComfyUI-sized files, customized, with adapters as training leaves
them (non-zero factors, the metadata the trainer writes), for the export and MODEL-patch tests."""
from types import SimpleNamespace

import pytest
import torch

from model_files import randomize_up


def adapters_for(cf, tmp_path):
    from adapters import inject, loading, lowrank
    from adapters.motion_adapter import MotionAdapter
    from adapters.spatial_adapters import SpatialAdapters
    plain = loading.load_video_model(cf.base, cf.motion)
    custom = inject.inject_checkpoint(plain, cf.custom)
    motion = randomize_up(MotionAdapter.for_model(plain, rank=4, seed=1), seed=2, std=0.2)
    motion.metadata.update(motion_module=cf.MOTION, motion_version=plain.info["motion_version"],
                           motion_fingerprint=lowrank.motion_fingerprint(plain), checkpoint=cf.BASE)
    spatial = randomize_up(SpatialAdapters.for_model(custom, rank=4, seed=3), seed=4, std=0.2)
    spatial.metadata.update(motion_module=cf.MOTION, motion_fingerprint=lowrank.motion_fingerprint(custom),
                            base_fingerprint=lowrank.t2i_fingerprint(custom), customized=cf.CUSTOM)
    files = {"motion": motion.save(tmp_path / "motion_adapter.safetensors"),
             "spatial": spatial.save(tmp_path / "spatial_adapters.safetensors")}
    return SimpleNamespace(plain=plain, custom=custom, motion=motion, spatial=spatial, files=files)


@pytest.fixture(scope="module")
def trained(comfy_files, tmp_path_factory):
    torch.manual_seed(0)
    return adapters_for(comfy_files, tmp_path_factory.mktemp("adapters"))


def plain_unet(video_model, patched):
    """A diffusers UNet2DConditionModel holding the spatial (T2I) tensors of ``patched`` (a
    video model sharing ``video_model``'s UNet), as they are with its patches applied."""
    from diffusers import UNet2DConditionModel
    cfg = {k: v for k, v in video_model.info["unet_config"].items() if k != "time_cond_proj_dim"}
    with patched.patched():
        sd = {k: v.clone() for k, v in video_model.unet.state_dict().items() if ".motion_modules." not in k}
    unet = UNet2DConditionModel(**cfg)
    missing, unexpected = unet.load_state_dict(sd, strict=False)
    assert not unexpected and not missing, (missing[:3], unexpected[:3])
    return unet.eval()
