"""The toy world and the embedded toy models: the world's ground truth, the shipped
files loading through the users' path (architecture detected from the tensors, the Motion
Adapter matching the shipped motion module), their videos moving, and the customized T2I
drawing its subject."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters import inject, loading, sampling, training
from toyworld import world as tw
from adapters.lowrank import LowRankAdapter
from adapters.motion_adapter import check_freezes

from model_files import load_script

EMBEDDED = Path(__file__).resolve().parent.parent / "embedded"
FILES = tw.MODEL_FILES


def test_toy_world_ground_truth_and_held_out_subject():
    clip = tw.render_caption("a green circle moving right", seed=3)
    assert clip.frames.shape == (tw.FRAMES, tw.SIZE, tw.SIZE, 3) and clip.frames.dtype == np.uint8
    centres, areas = tw.locate(clip.frames)
    assert np.abs(centres - clip.positions).max() < 1.0 and (areas > 50).all()
    dx, dy = tw.displacement(clip.frames)
    assert dx > tw.SPEED[0] * (tw.FRAMES - 1) - 1 and abs(dy) < 1
    again = tw.render_caption("a green circle moving right", seed=3)
    assert np.array_equal(clip.frames, again.frames)  # deterministic
    world = tw.dataset(60, seed=5)
    assert sorted({c.caption for c in world}) == sorted(tw.all_captions())  # balanced: every caption once
    for c in world:
        assert tw.CUSTOM_TOKEN not in c.caption and tw.CUSTOM_SHAPE not in c.caption
        assert tw.custom_colour_score(c.frames) < 0.05
        assert tw.parse_caption(c.caption)["shape"] == c.spec.shape
    stills = tw.custom_stills(6)
    assert all(s.frames.shape[0] == 1 and s.caption == tw.CUSTOM_CLASS_CAPTION for s in stills)
    assert min(tw.custom_colour_score(s.frames) for s in stills) > 0.5  # at 32 px the blended rim is ~40 %


@pytest.fixture(scope="module")
def toy_model():
    torch.set_num_threads(1)
    return loading.load_video_model(EMBEDDED / FILES["base"], EMBEDDED / FILES["motion"])


def test_shipped_models_are_detected_like_user_files(toy_model):
    vm = toy_model
    assert json.loads((EMBEDDED / "toy_models.json").read_text())["files"] == FILES  # the training record
    assert vm.info["motion_version"] == "v2"
    assert list(vm.unet.config.block_out_channels) == [64, 64]
    assert vm.vae.config.scaling_factor == pytest.approx(0.18215)
    assert vm.vae_scale == 4  # 3 levels: 32 px frames, 8x8 latents
    assert vm.text_encoder.config.vocab_size == len(vm.tokenizer) == 562  # configs/toy_tokenizer: a token per word
    assert vm.tokenizer.tokenize("a red circle moving left") == ["a</w>", "red</w>", "circle</w>", "moving</w>",
                                                                 "left</w>"]
    adapter = LowRankAdapter.load(EMBEDDED / FILES["adapter"], "motion")
    adapter.check(vm, EMBEDDED / FILES["adapter"])  # trained for this very motion module


def _video(model, prompt, seed, frames=tw.FRAMES):
    return sampling.text_to_video(model, prompt, seed=seed, steps=20, cfg=4.0, width=tw.SIZE, height=tw.SIZE,
                                  frames=frames)


def test_shipped_motion_adapter_freezes_and_slides(toy_model):
    """The shipped Motion Adapter on base prompts and seeds it was not trained on: at α = 1 the
    subject stays put (under 1 px of travel), the pack's check says it freezes, and the mean speed
    falls as α goes from -1 to 1 (the motion slider)."""
    adapter = LowRankAdapter.load(EMBEDDED / FILES["adapter"], "motion")
    prompts = ("a green circle moving left", "a red circle moving up")
    speed, travel = {}, {}
    for alpha in (-1.0, 0.0, 1.0):
        m = adapter.add_to(toy_model, alpha) if alpha else toy_model
        centres = [tw.locate(_video(m, p, s))[0] for p in prompts for s in (1000, 1001)]
        travel[alpha] = np.mean([np.hypot(*(c[-1] - c[0])) for c in centres])
        speed[alpha] = np.mean([np.linalg.norm(np.diff(c, axis=0), axis=1).mean() for c in centres])
    assert travel[1.0] < 1.0 < 8.0 < travel[0.0], travel
    assert speed[-1.0] > speed[0.0] > speed[1.0], speed
    check = check_freezes(toy_model, adapter, prompts, cfg=4.0, width=tw.SIZE, height=tw.SIZE, frames=tw.FRAMES)
    assert check.freezes, check.summary()
    with torch.no_grad():  # the same adapter at a quarter of its strength leaves motion: the check warns
        for p in adapter.up.values():
            p.mul_(0.25)
    weak = check_freezes(toy_model, adapter, prompts, cfg=4.0, width=tw.SIZE, height=tw.SIZE, frames=tw.FRAMES)
    assert not weak.freezes and weak.share > check.share and "WARNING" in weak.summary(), weak.summary()


def test_shipped_models_generate_moving_clips(toy_model):
    """The base video model keeps one subject of the prompt's colour in every frame, moves it
    the way the caption says and keeps it still when told to (the world's own clips travel
    9-12 px over 8 frames; the bounds are set from toy_models.json, stage measure)."""
    along = []
    for prompt in ("a red circle moving left", "a blue circle moving right"):
        sign = tw.MOTIONS[tw.parse_caption(prompt)["motion"]][0]
        for seed in (0, 1, 2):
            video = _video(toy_model, prompt, seed)
            _, areas = tw.locate(video)
            assert areas.min() > 40, (prompt, seed, areas)  # a subject in every frame
            assert tw.colour_share(video, tw.parse_caption(prompt)["colour"]) > 0.5, (prompt, seed)
            dx, dy = tw.displacement(video)
            assert sign * dx > 3 * abs(dy) and sign * dx > 3, (prompt, seed, dx, dy)  # the caption's way
            along.append(sign * float(dx))
    assert np.mean(along) > 8.0, along
    for seed in (0, 1, 2):
        assert np.hypot(*tw.displacement(_video(toy_model, "a blue circle standing still", seed))) < 2.0, seed


def test_customized_t2i_draws_the_customization(toy_model):
    """'a sks star' from the DreamBooth-style checkpoint is star-shaped; from the base T2I it is
    a disc (the toy CLIP-I: toyworld.star_score; a disc scores about 0.1, the star stills after
    the autoencoder's round trip about 0.3)."""
    custom = inject.inject_checkpoint(toy_model, EMBEDDED / FILES["custom"])

    def star(model):
        with training.temporal_layers_off(model.unet):
            return np.mean([tw.star_score(_video(model, tw.CUSTOM_CLASS_CAPTION, s, frames=1)) for s in (0, 1, 2)])
    base, customized = star(toy_model), star(custom)
    assert customized > base + 0.08, (base, customized)


def test_text_stage_keeps_direction_words_apart(tmp_path):
    """The toy CLIP's pre-training (scripts/train_toy_models.py, stage text): a caption's states
    change as much when its direction word is flipped as when its colour is (trained with the
    T2I on single frames instead, the direction word hardly changed them, and the motion module
    had no word to follow: benchmarks/bench_toy_words.py)."""
    script = load_script("scripts/train_toy_models.py")
    torch.set_num_threads(2)
    info = script.train_text(80, tmp_path)
    assert info["state_change_direction_flip"] > 0.3, info
    assert info["state_change_direction_flip"] > 0.3 * info["state_change_colour_flip"], info
    te = script.load_text(tmp_path)
    assert not any(p.requires_grad for p in te.parameters())


def test_unpack_stage_round_trips_the_shipped_files(tmp_path):
    """scripts/train_toy_models.py, stage unpack: the work files rebuilt from the shipped base
    checkpoint and motion module write those files back tensor for tensor, so a stronger
    customization made from them (benchmarks/README.md) starts from the shipped weights."""
    from safetensors.torch import load_file
    script = load_script("scripts/train_toy_models.py")
    out, work, again = tmp_path / "out", tmp_path / "work", tmp_path / "again"
    for d in (out, work, again):
        d.mkdir()
    for part in ("base", "motion"):
        (out / FILES[part]).write_bytes((EMBEDDED / FILES[part]).read_bytes())
    info = script.unpack_files(work, out)
    assert info["motion_tensors"] > 0
    script.write_base(work, again)
    for part in ("base", "motion"):
        shipped, written = load_file(EMBEDDED / FILES[part]), load_file(again / FILES[part])
        assert shipped.keys() == written.keys(), part
        for k, t in shipped.items():
            assert torch.equal(t, written[k]), (part, k)


def test_frozen_t2i_motion_stage_trains_the_motion_modules_alone(tmp_path):
    """scripts/train_toy_models.py --frozen-t2i (AnimateDiff's recipe): the motion stage moves the
    motion modules and leaves every T2I weight as it was; without it the T2I is fine-tuned too."""
    script = load_script("scripts/train_toy_models.py")
    torch.set_num_threads(2)
    out, work = tmp_path / "out", tmp_path / "work"
    for d in (out, work):
        d.mkdir()
    for part in ("base", "motion"):
        (out / FILES[part]).write_bytes((EMBEDDED / FILES[part]).read_bytes())
    script.unpack_files(work, out)
    (work / "t2i.pt").write_bytes((work / script.VIDEO_T2I).read_bytes())
    vae, clips = script.load_vae(work), tw.dataset(8, seed=0)   # a few clips in the stage's latent cache
    torch.save({"latents": torch.stack([script.encode(vae, c.frames).permute(1, 0, 2, 3) for c in clips]),
                "captions": [c.caption for c in clips]}, work / "clips.pt")
    t2i = torch.load(work / "t2i.pt", weights_only=True)["unet"]
    for frozen in (True, False):
        script.train_motion(3, work, frozen_t2i=frozen)
        after = torch.load(work / script.VIDEO_T2I, weights_only=True)["unet"]
        changed = [k for k in t2i if not torch.equal(t2i[k], after[k])]
        assert (not changed) if frozen else len(changed) > len(t2i) // 2, (frozen, len(changed))
        motion = torch.load(work / "motion.pt", weights_only=True)
        assert any(k.endswith("proj_out.weight") and v.abs().max() > 0 for k, v in motion.items())


def test_toy_demo_runs_end_to_end_on_the_shipped_files(tmp_path):
    """The README's main command (scripts/demo.sh -> scripts/toy_demo.py), cut down: every row
    sampled, a GIF/WebP/MP4 per prompt and seed, the scores written, the adapters reloadable."""
    demo = load_script("scripts/toy_demo.py")
    torch.set_num_threads(2)
    r = demo.run(tmp_path, seeds=(0,), prompts=[tw.custom_caption("left")], steps=3, train_steps=3,
                 n_stills=2, n_prior=2, log=lambda *a: None)
    rows = ["base", "naive injection", "Still-Moving"]
    assert list(r["scores"]) == rows
    saved = json.loads((tmp_path / "toy_demo_scores.json").read_text())
    assert list(saved["mean"]) == rows and all(len(v) == 1 for v in saved["runs"].values())
    assert sorted(p.suffix for p in r["files"] if p.suffix in (".gif", ".webp", ".mp4")) == [".gif", ".mp4", ".webp"]
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in r["files"])
    adapter = LowRankAdapter.load(next(p for p in r["files"] if p.suffix == ".safetensors"), "spatial")
    assert adapter.kind == "spatial"
    # the Still-Moving column is the saved adapters on naive injection, Motion Adapter removed
    prompt = tw.custom_caption("left")
    naive = inject.inject_checkpoint(loading.load_video_model(EMBEDDED / FILES["base"], EMBEDDED / FILES["motion"]),
                                     EMBEDDED / FILES["custom"])
    again = sampling.text_to_video(adapter.add_to(naive, 1.0), prompt, seed=0, steps=3, cfg=4.0, width=tw.SIZE,
                                   height=tw.SIZE, frames=tw.FRAMES)
    assert demo.scores(again, prompt) == saved["runs"]["Still-Moving"][0]


def test_template_score_sees_the_star_where_star_score_sees_specks():
    """A disc with four stray specks is 'star-like' to star_score (its pixels spread far from
    their centroid) but not to the template match; a base model can draw such blobs for the
    unseen words "sks star"."""
    star = tw.custom_stills(3, seed=5)[2].frames            # not one of the reference stills
    disc = tw.render_caption("a green circle standing still", seed=1).frames[:1].copy()
    specks = disc.copy()
    for y, x in ((3, 3), (28, 4), (4, 27), (27, 28)):
        specks[0, y:y + 2, x:x + 2] = (60, 200, 90)
    assert tw.template_score(star) > 0.85 > 0.5 > tw.template_score(disc)
    assert tw.star_score(specks) > tw.star_score(star) > 0.35 > 0.2 > tw.star_score(disc)
    assert tw.template_score(specks) < 0.5
