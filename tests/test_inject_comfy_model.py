"""Inject MODEL takes a ComfyUI MODEL's weights and weight patches, and refuses what it cannot run
(attention patches, wrappers, object patches, unknown tensors) with a message, never dropping it."""
import pytest
import torch

from comfy_host import ComfyError


@pytest.fixture(scope="module")
def host(comfy, comfy_files):
    comfy.add_model("checkpoints", comfy_files.BASE, comfy_files.base)
    comfy.add_model("checkpoints", comfy_files.CUSTOM, comfy_files.custom)
    comfy.add_model("animatediff_models", comfy_files.MOTION, comfy_files.motion)
    return comfy


def graph(cf, between=None):
    """Load Checkpoint (customized) -> [a node that patches the MODEL] -> Inject MODEL."""
    g = {"load": {"class_type": "SM_LoadVideoModel", "inputs": {"ckpt_name": cf.BASE, "motion_module": cf.MOTION,
                                                                "dtype": "auto"}},
         "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": cf.CUSTOM}}}
    source = ["ck", 0]
    if between:
        class_type, inputs = between
        g["patch"] = {"class_type": class_type, "inputs": dict(inputs, model=["ck", 0])}
        source = ["patch", 0]
    g["inj"] = {"class_type": "SM_InjectComfyModel", "inputs": {"video_model": ["load", 0], "model": source,
                                                                 "weight": 1.0}}
    g["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["inj", 0]}}  # an output node
    return g


@pytest.mark.parametrize("between, named", [
    (("FreeU", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}), "transformer option 'patches'"),
    (("ModelSamplingDiscrete", {"sampling": "lcm", "zsnr": False}), "object patch 'model_sampling'"),
    (("PerturbedAttentionGuidance", {"scale": 3.0}), "model option 'sampler_post_cfg_function'"),
], ids=["FreeU", "ModelSamplingDiscrete", "PAG"])
def test_model_patches_are_refused_by_name(host, comfy_files, between, named):
    with pytest.raises(ComfyError) as err:
        host.run(graph(comfy_files, between))
    message = err.value.error["exception_message"]
    assert named in message and "cannot run" in message and "native route" in message


def test_plain_model_is_taken(host, comfy_files):
    result = host.run(graph(comfy_files))
    video_model = result.outputs["inj"][0][0]
    assert video_model.injected_layers()


def test_unknown_unet_tensor_is_refused(host, comfy_files):
    import comfy.sd
    node = host.nodes.NODE_CLASS_MAPPINGS["SM_InjectComfyModel"]()
    video_model = host.run(graph(comfy_files)).outputs["load"][0][0]
    model = comfy.sd.load_checkpoint_guess_config(str(comfy_files.custom), output_vae=False, output_clip=False)[0]
    model.model.diffusion_model.register_parameter("extra_block", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ValueError, match=r"the MODEL input: .*1 tensors an SD1.5 UNet does not have \(e.g. extra_block\)"):
        node.inject(video_model, model, 1.0)
