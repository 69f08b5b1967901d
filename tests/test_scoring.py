"""Video scores: motion on videos whose motion is known by construction, CLIP-T / CLIP-I on a
tiny CLIPModel written here with save_pretrained (checked against transformers' own CLIP
forward), the CLI, and the scoring node inside a real ComfyUI."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from comfy_host import ComfyError

from adapters import cli, scoring
from adapters.errors import ModelFileError

TOKENIZER = Path(__file__).resolve().parent.parent / "adapters" / "configs" / "tiny_tokenizer"


def square_video(frames=8, size=64, step=(2, 0), start=(10, 24), side=12, colour=(0.9, 0.1, 0.1), bg=0.5):
    """A square moving ``step`` pixels (x, y) per frame on a plain background."""
    v = torch.full((frames, size, size, 3), bg)
    for f in range(frames):
        x, y = start[0] + step[0] * f, start[1] + step[1] * f
        v[f, y:y + side, x:x + side] = torch.tensor(colour)
    return v


def test_subject_motion_follows_the_square():
    right = scoring.motion_scores(square_video(step=(2, 0)))
    assert right["direction"] == "right" and right["subject_tracked"] == 1.0
    assert right["subject_speed"] == pytest.approx(2 / 64, abs=1e-4)
    assert right["subject_dx"] == pytest.approx(14 / 64, abs=1e-4) and abs(right["subject_dy"]) < 1e-4
    up = scoring.motion_scores(square_video(step=(0, -3), start=(24, 40)))
    assert up["direction"] == "up" and up["subject_dy"] == pytest.approx(-21 / 64, abs=1e-4)
    left = scoring.motion_scores(square_video(step=(-4, 1), start=(50, 20)))
    assert left["direction"] == "left"
    faster = scoring.motion_scores(square_video(step=(4, 0)))
    assert faster["frame_difference"] > right["frame_difference"] > 0


def test_frozen_and_noise_videos():
    still = scoring.motion_scores(square_video(step=(0, 0)))
    assert still["frame_difference"] == 0 and still["subject_speed"] == 0 and still["direction"] == "still"
    assert still["frame_correlation"] == pytest.approx(1.0, abs=1e-5)
    noise = scoring.motion_scores(torch.rand(8, 64, 64, 3, generator=torch.Generator().manual_seed(0)))
    assert abs(noise["frame_correlation"]) < 0.2
    moving = scoring.motion_scores(square_video(step=(2, 0)))
    assert noise["frame_correlation"] < moving["frame_correlation"] < 1.0
    empty = scoring.motion_scores(torch.full((4, 32, 32, 3), 0.3))
    assert empty["subject_tracked"] == 0 and empty["direction"] == "still" and empty["frame_correlation"] == 1
    flicker = torch.full((4, 32, 32, 3), 0.3)
    flicker[1::2] = 0.7
    assert scoring.motion_scores(flicker)["frame_correlation"] == 0


def test_latents_get_the_scores_that_need_no_pixels():
    lat = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    s = scoring.motion_scores(lat)
    assert s["frames"] == 6 and "direction" not in s
    assert s["frame_difference"] == pytest.approx((lat[0, :, 1:] - lat[0, :, :-1]).abs().mean().item())
    frozen = lat[:, :, :1].expand(-1, -1, 6, -1, -1)
    assert scoring.motion_scores(frozen)["frame_difference"] == 0
    with pytest.raises(ValueError, match="latents must hold one video"):
        scoring.motion_scores(torch.zeros(2, 4, 6, 8, 8))


# --- a tiny local CLIP -------------------------------------------------------------------------

def write_tiny_clip(folder, vision_only=False):
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer,
                              CLIPVisionModelWithProjection)
    tok = CLIPTokenizer(str(TOKENIZER / "vocab.json"), str(TOKENIZER / "merges.txt"), model_max_length=77)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=2)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(cfg.vision_config) if vision_only else CLIPModel(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return Path(folder)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


def test_clip_scores_match_transformers_clip(tiny_clip):
    """CLIP-T times CLIP's logit scale is CLIPModel's own logits_per_image, with CLIPProcessor's
    preprocessing: the scorer embeds frames and prompts exactly as CLIP does."""
    from transformers import CLIPModel, CLIPProcessor
    clip = scoring.ClipScorer.load(tiny_clip)
    frames = square_video(frames=3, size=48)
    prompt = "a red square moving right"
    ours = clip.clip_t(frames, prompt)
    model = CLIPModel.from_pretrained(str(tiny_clip), local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(str(tiny_clip), local_files_only=True)
    inputs = proc(text=[prompt], images=[(f * 255).round().byte().numpy() for f in frames], return_tensors="pt",
                  padding="max_length", max_length=77)
    with torch.no_grad():
        out = model(**inputs)
    torch.testing.assert_close(ours * model.logit_scale.exp(), out.logits_per_image[:, 0], rtol=1e-4, atol=1e-4)
    assert ours.shape == (3,) and torch.isfinite(ours).all()
    # CLIP-I: a frame against itself is 1; a different image less
    refs = frames[:1]
    same = clip.clip_i(frames[:1], refs)
    assert same.item() == pytest.approx(1.0, abs=1e-5)
    other = clip.clip_i(torch.rand(1, 48, 48, 3, generator=torch.Generator().manual_seed(3)), refs)
    assert other.item() < 0.999
    s = scoring.score_video(frames, prompt, refs, clip)
    assert s["clip_t"] == pytest.approx(ours.mean().item(), abs=1e-6)
    assert s["clip_i"] == pytest.approx(clip.clip_i(frames, refs).mean().item(), abs=1e-6)
    assert len(s["per_frame"]["clip_i"]) == 3
    assert s["clip_consistency"] == pytest.approx(clip.consistency(frames), abs=1e-6) and s["clip_consistency"] < 1
    assert clip.consistency(frames[:1].expand(3, -1, -1, -1)) == pytest.approx(1.0, abs=1e-5)


def test_clip_folder_errors(tiny_clip, tmp_path):
    with pytest.raises(ModelFileError, match="folder not found"):
        scoring.ClipScorer.load(tmp_path / "nope")
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ModelFileError, match="not a CLIPModel"):
        scoring.ClipScorer.load(unet)
    with pytest.raises(ModelFileError, match="vision tower"):
        scoring.ClipScorer.load(write_tiny_clip(tmp_path / "vision", vision_only=True))
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_clip, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="no weights"):
        scoring.ClipScorer.load(no_weights)
    no_tok = tmp_path / "no_tok"
    shutil.copytree(tiny_clip, no_tok)
    for f in no_tok.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ModelFileError, match="tokenizer"):
        scoring.ClipScorer.load(no_tok)


def _save_animation(path, frames):
    from PIL import Image
    imgs = [Image.fromarray((f * 255).round().byte().numpy()) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=100, loop=0)
    return path


def test_cli_scores_videos_and_frame_folders(tiny_clip, tmp_path, capsys):
    video = _save_animation(tmp_path / "right.gif", square_video(step=(3, 0)))
    folder = tmp_path / "up_frames"
    folder.mkdir()
    from PIL import Image
    for i, f in enumerate(square_video(step=(0, -3), start=(24, 40))):
        Image.fromarray((f * 255).round().byte().numpy()).save(folder / f"{i:03d}.png")
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray((square_video(frames=1)[0] * 255).byte().numpy()).save(refs / "subject.png")
    out = tmp_path / "scores.json"
    args = ["score", str(video), str(folder), "--prompt", "a red square", "--clip", str(tiny_clip),
            "--references", str(refs), "--json", str(out), "--device", "cpu"]
    assert cli.main(args) == 0
    scores = json.loads(out.read_text())
    assert scores[str(video)]["direction"] == "right" and scores[str(folder)]["direction"] == "up"
    assert scores[str(video)]["frames"] == 8
    for s in scores.values():
        assert -1 <= s["clip_t"] <= 1 and -1 <= s["clip_i"] <= 1 and len(s["per_frame"]["clip_t"]) == 8
    assert cli.main(args) == 0  # never over the first file
    assert out.exists() and (tmp_path / "scores_00001.json").exists()
    assert "direction right" in capsys.readouterr().out
    assert cli.main(["score", str(video), "--clip", str(tmp_path)]) == 1
    assert "not a transformers model folder" in capsys.readouterr().err


def test_score_node_in_comfyui(comfy, tiny_clip):
    """LoadImage (an animated PNG) -> SM_ScoreVideo with the CLIP folder listed from models/."""
    dest = comfy.models_dir / "still_moving" / "clip_scoring" / "tiny_clip"
    if not dest.exists():
        shutil.copytree(tiny_clip, dest)
    frames = square_video(step=(2, 0))
    _save_animation(comfy.input_dir / "moving_square.png", frames)
    _save_animation(comfy.input_dir / "subject.png", frames[:1])
    node = comfy.nodes.NODE_CLASS_MAPPINGS["SM_ScoreVideo"]
    assert "still_moving/clip_scoring/tiny_clip" in node.INPUT_TYPES()["required"]["clip_model"][0]
    comfy.folder_paths.filename_list_cache.clear()
    adapters = comfy.nodes.NODE_CLASS_MAPPINGS["SM_LoadAdapter"].INPUT_TYPES()["required"]["adapter_name"][0]
    assert not any("clip_scoring" in a for a in adapters)  # the CLIP's files are not adapters
    graph = {"v": {"class_type": "LoadImage", "inputs": {"image": "moving_square.png"}},
             "r": {"class_type": "LoadImage", "inputs": {"image": "subject.png"}},
             "s": {"class_type": "SM_ScoreVideo", "inputs": {
                 "frames": ["v", 0], "prompt": "a red square", "clip_model": "still_moving/clip_scoring/tiny_clip",
                 "mask_threshold": 0.2, "references": ["r", 0]}}}
    result = comfy.run(graph)
    text, clip_t, clip_i, diff, speed, consistency = (o[0] for o in result.outputs["s"])
    scores = json.loads(text)
    assert scores["direction"] == "right" and speed == pytest.approx(2 / 64, abs=1e-3)
    clip = scoring.ClipScorer.load(tiny_clip)
    assert clip_t == pytest.approx(clip.clip_t(frames, "a red square").mean().item(), abs=1e-4)
    assert clip_i == pytest.approx(clip.clip_i(frames, frames[:1]).mean().item(), abs=1e-4)
    assert diff > 0 and consistency == pytest.approx(scores["clip_consistency"])
    assert "direction right" in result.ui["s"]["text"][0]
    graph["s"]["inputs"]["clip_model"] = "still_moving/clip_scoring/../clip_scoring/tiny_clip"
    with pytest.raises(ComfyError, match="invalid prompt"):  # only listed folders
        comfy.run(graph)
