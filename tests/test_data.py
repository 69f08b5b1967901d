"""Training data: stills and videos read from real files, crop geometry, latents, prior videos,
and the dataset nodes inside a real ComfyUI."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from adapters import data, loading
from adapters.errors import ModelFileError

W, H, N = 64, 48, 20  # the test videos: 64x48, 20 frames, a white square moving right


def square_frame(i, w=W, h=H):
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = 60  # dark blue background
    x = 2 + 2 * i
    img[16:32, x:x + 12] = 255
    return img


def write_video(path, codec, n=N, rate=10):
    import av
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10"}
        for i in range(n):
            for packet in stream.encode(__import__("av").VideoFrame.from_ndarray(square_frame(i), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_gif(path, n=N):
    frames = [Image.fromarray(square_frame(i)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def square_x(frame):
    """Column of the square's left edge in a (H, W, 3) frame (bright in red)."""
    cols = (frame[..., 0] > 0.5).any(0).nonzero()
    return int(cols[0]) if len(cols) else -1


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "a_square.mp4", "libx264")
    (d / "a_square.txt").write_text("a white square moving right\n")
    write_video(d / "b_square.webm", "libvpx-vp9")
    write_gif(d / "c_square.gif")
    frames = d / "d_frames"
    frames.mkdir()
    for i in range(12):  # frame_2 must come before frame_10
        Image.fromarray(square_frame(i)).save(frames / f"frame_{i}.png")
    (frames / "caption.txt").write_text("frames in a folder")
    (d / "notes.md").write_text("not a video")
    return d


@pytest.fixture(scope="module")
def tiny_model(tiny_files):
    return loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])


# --- images ----------------------------------------------------------------------------------

def test_image_folder_captions_order_and_values(tmp_path):
    red = np.zeros((40, 30, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "img_10.png")
    Image.fromarray(red).save(tmp_path / "img_2.jpg", quality=95)
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent: becomes white, not black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "img_3.png")
    (tmp_path / "img_2.txt").write_text("  sks dog on a sofa \n")
    (tmp_path / "img_10.txt").write_text("")  # empty caption file: default used
    (tmp_path / "readme.md").write_text("ignored")
    clips = data.load_image_folder(tmp_path, default_caption="sks dog")
    assert [c.source.rsplit("/", 1)[-1] for c in clips] == ["img_2.jpg", "img_3.png", "img_10.png"]
    assert [c.caption for c in clips] == ["sks dog on a sofa", "sks dog", "sks dog"]
    assert clips[0].frames.shape == (1, 40, 30, 3) and clips[0].frames.dtype == torch.float32
    assert clips[0].frames[..., 0].min() > 0.95 and clips[0].frames[..., 1:].max() < 0.05
    assert clips[1].frames.min() == 1.0
    assert "img_2.jpg" in repr(clips[0]) and "\n" not in repr(clips[0])


def test_image_folder_max_side_shrinks_keeping_aspect(tmp_path):
    Image.fromarray(np.full((100, 200, 3), 128, np.uint8)).save(tmp_path / "wide.png")
    (clip,) = data.load_image_folder(tmp_path, max_side=50)
    assert clip.frames.shape == (1, 25, 50, 3)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        data.load_image_folder(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("caption without image")
    with pytest.raises(ModelFileError, match=r"no images.*\.png.*\.webp"):
        data.load_image_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    with pytest.raises(ModelFileError, match="broken.png"):
        data.load_image_folder(tmp_path)


def test_clips_from_images_captions():
    imgs = torch.rand(3, 16, 24, 3)
    clips = data.clips_from_images(imgs, "same for all")
    assert len(clips) == 3 and all(c.frames.shape == (1, 16, 24, 3) for c in clips)
    assert {c.caption for c in clips} == {"same for all"}
    assert torch.equal(clips[2].frames[0], imgs[2])
    assert [c.caption for c in data.clips_from_images(imgs, ["a", "b", "c"])] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="2 captions for 3 images"):
        data.clips_from_images(imgs, ["a", "b"])


# --- videos ----------------------------------------------------------------------------------

def test_video_folder_formats_frames_captions(video_dir):
    clips = data.load_video_folder(video_dir, frames=16, default_caption="default")
    names = [c.source.rsplit("/", 1)[-1] for c in clips]
    assert names == ["a_square.mp4", "b_square.webm", "c_square.gif", "d_frames"]
    assert [c.caption for c in clips] == ["a white square moving right", "default", "default", "frames in a folder"]
    for c in clips[:3]:
        assert c.frames.shape == (16, H, W, 3) and c.frames.dtype == torch.float32
        assert 0 <= c.frames.min() and c.frames.max() <= 1
        # decoded in order from the first frame: the square moves 2 px per frame
        xs = [square_x(f) for f in c.frames]
        assert abs(xs[0] - 2) <= 1 and abs(xs[15] - 32) <= 1, (c.source, xs)
    assert clips[3].frames.shape == (12, H, W, 3)  # shorter than 16: kept with what it has
    assert [square_x(f) for f in clips[3].frames] == [2 + 2 * i for i in range(12)]  # natural order


def test_video_stride_and_short_video_warning(tmp_path):
    write_video(tmp_path / "v.mp4", "libx264")
    (clip,) = data.load_video_folder(tmp_path, frames=4, stride=3)
    assert clip.frames.shape[0] == 4
    assert [square_x(f) for f in clip.frames] == pytest.approx([2, 8, 14, 20], abs=1)
    (clip,) = data.load_video_folder(tmp_path, frames=16, stride=3)  # 20 frames -> 7 at stride 3
    assert clip.frames.shape[0] == 7
    write_video(tmp_path / "w_short.mp4", "libx264", n=2)
    with pytest.warns(UserWarning, match="w_short.mp4"):
        clips = data.load_video_folder(tmp_path, frames=16, stride=2)  # 1 frame left: skipped
    assert [c.source.rsplit("/", 1)[-1] for c in clips] == ["v.mp4"]


def test_written_videos_read_back_through_the_users_path(tmp_path):
    """files.write_video (the demo's GIF/WebP/MP4) gives files the video reader takes back, frame
    for frame; odd sides are padded for H.264's yuv420p; nothing is overwritten."""
    from adapters.files import write_video
    frames = np.stack([square_frame(i, w=W - 1, h=H - 1) for i in range(12)])  # 63x47: odd on purpose
    for ext in (".gif", ".webp", ".mp4"):
        write_video(frames, tmp_path / f"v{ext}", fps=6)
    clips = data.load_video_folder(tmp_path, frames=12)
    assert [c.source.rsplit("/", 1)[-1] for c in clips] == ["v.gif", "v.mp4", "v.webp"]
    for c in clips:
        exact = not c.source.endswith(".mp4")
        assert c.frames.shape == ((12, H - 1, W - 1, 3) if exact else (12, H, W, 3)), c.source
        assert [square_x(f) for f in c.frames] == [2 + 2 * i for i in range(12)], c.source
        err = (c.frames[:, :H - 1, :W - 1] * 255 - torch.from_numpy(frames).float()).abs().mean()
        assert err < (0.5 if exact else 4.0), (c.source, float(err))
    before = (tmp_path / "v.mp4").read_bytes()
    with pytest.raises(FileExistsError):
        write_video(frames, tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == before
    with pytest.raises(ValueError, match="write videos as .gif, .webp, .mp4"):
        write_video(frames, tmp_path / "v.mov")


def test_video_folder_errors(tmp_path):
    with pytest.raises(ModelFileError, match=r"no usable videos.*\.mp4"):
        data.load_video_folder(tmp_path)
    write_video(tmp_path / "short.mp4", "libx264", n=1)
    with warnings.catch_warnings(), pytest.raises(ModelFileError, match="too short: short.mp4"):
        warnings.simplefilter("ignore")
        data.load_video_folder(tmp_path)
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelFileError, match="corrupt.mp4.*cannot be decoded"):
        data.load_video_folder(tmp_path)
    with pytest.raises(ValueError, match="stride"):
        data.load_video_folder(tmp_path, stride=0)


# --- geometry --------------------------------------------------------------------------------

def test_resize_crop_keeps_the_centre():
    frame = torch.zeros(1, 48, 64, 3)
    frame[:, 22:26, 30:34, 0] = 1.0       # red centre mark
    frame[:, :, :4, 1] = 1.0              # green strip at the left edge: cropped away for a square
    out = data.resize_crop(frame, 32, 32)
    assert out.shape == (1, 32, 32, 3)
    ys, xs = torch.nonzero(out[0, ..., 0] > 0.2, as_tuple=True)
    assert abs(ys.float().mean() - 15.5) < 0.6 and abs(xs.float().mean() - 15.5) < 0.6
    assert out[..., 1].max() == 0
    tall = data.resize_crop(torch.rand(2, 48, 64, 3), 16, 32)  # portrait from landscape
    assert tall.shape == (2, 32, 16, 3)
    same = torch.rand(3, 48, 64, 3)
    assert torch.equal(data.resize_crop(same, 64, 48), same)
    wide = torch.zeros(1, 40, 40, 3)
    wide[:, :5] = 1.0                     # top rows cropped for a 2:1 target
    assert data.resize_crop(wide, 40, 20).max() == 0


# --- latents ---------------------------------------------------------------------------------

def test_encode_clips_shapes_and_determinism(tiny_model, video_dir):
    clips = data.load_video_folder(video_dir, frames=5)[:2] + data.clips_from_images(torch.rand(1, 50, 70, 3), "x")
    lat = data.encode_clips(tiny_model.vae, clips, 32, 24, chunk=2)
    assert [tuple(z.latents.shape) for z in lat] == [(4, 5, 3, 4), (4, 5, 3, 4), (4, 1, 3, 4)]
    assert all(z.latents.dtype == torch.float32 and z.latents.device.type == "cpu" for z in lat)
    assert lat[0].caption == "a white square moving right"
    again = data.encode_clips(tiny_model, clips[:1], 32, 24, chunk=8)  # a VideoModel works too; chunking exact
    torch.testing.assert_close(again[0].latents, lat[0].latents, rtol=1e-5, atol=1e-5)
    # what the VAE gives directly for the first frame, scaled
    vae = tiny_model.vae
    x = data.resize_crop(clips[0].frames[:1], 32, 24).permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(lat[0].latents[:, 0], ref[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 8"):
        data.encode_clips(vae, clips, 30, 24)


def test_frozen_picks_a_frame_reproducibly():
    z = data.LatentClip(torch.arange(8.0).view(1, 8, 1, 1).expand(4, 8, 2, 2).clone(), "c")
    picks = [int(data.frozen(z, torch.Generator().manual_seed(s))[0, 0, 0, 0]) for s in range(20)]
    again = [int(data.frozen(z, torch.Generator().manual_seed(s))[0, 0, 0, 0]) for s in range(20)]
    assert picks == again and len(set(picks)) > 2
    out = data.frozen(z, torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 2, 2)
    assert torch.equal(data.frozen(z.latents, torch.Generator().manual_seed(3)), data.frozen(z, torch.Generator().manual_seed(3)))


def test_generate_prior_clips(tiny_model):
    seen = []
    clips = data.generate_prior_clips(tiny_model, "a dog running\n\nwaves", count=2, seed=7, frames=4, width=32,
                                      height=32, steps=1, cfg=2.0, callback=lambda d, t, x, x0: seen.append((d, t)))
    assert len(clips) == 2 and all(c.frames.shape == (4, 32, 32, 3) for c in clips)
    assert [c.caption for c in clips] == ["a dog running", "waves"]
    assert seen == [(1, 2), (2, 2)]  # progress over all clips
    # clip i is prompt i (cycling) with seed + i: the same as asking for it alone
    (again,) = data.generate_prior_clips(tiny_model, ["waves"], count=1, seed=8, frames=4, width=32,
                                         height=32, steps=1, cfg=2.0)
    torch.testing.assert_close(again.frames, clips[1].frames)
    with pytest.raises(ValueError, match="no prompts"):
        data.generate_prior_clips(tiny_model, " \n", 1, 0, 4, 32, 32)


# --- nodes in ComfyUI ------------------------------------------------------------------------

DATA_NODES = {"SM_ClipsFromImages", "SM_ImageFolderClips", "SM_VideoFolderClips", "SM_GeneratePriorClips",
              "SM_MergeClips"}


def _show(ref):
    return {"show": {"class_type": "PreviewAny", "inputs": {"source": ref}}}


def test_dataset_nodes_register(comfy):
    assert comfy.pack_loaded, comfy.pack_log
    assert DATA_NODES <= comfy.pack_nodes
    for name in DATA_NODES:
        cls = comfy.nodes.NODE_CLASS_MAPPINGS[name]
        assert cls.CATEGORY == "Still-Moving/training" and cls.RETURN_TYPES == ("SM_CLIPS", "INT")
        for spec in cls.INPUT_TYPES()["required"].values():
            assert spec[1].get("tooltip"), name
        assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS[name].endswith("(Still-Moving)")


def test_image_folder_node_and_merge(comfy):
    folder = comfy.input_dir / "sm_test_stills"
    folder.mkdir(exist_ok=True)
    for i in range(2):
        Image.fromarray(np.full((24, 32, 3), 100 * i, np.uint8)).save(folder / f"s{i}.png")
    (folder / "s1.txt").write_text("sks cat")
    graph = {
        "load": {"class_type": "SM_ImageFolderClips", "inputs": {"folder": "sm_test_stills",
                                                                 "default_caption": "a cat", "max_side": 1024}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 2, "color": 0}},
        "still": {"class_type": "SM_ClipsFromImages", "inputs": {"images": ["img", 0], "caption": "one\ntwo"}},
        "merge": {"class_type": "SM_MergeClips", "inputs": {"clips_a": ["load", 0], "clips_b": ["still", 0]}},
    } | _show(["merge", 1])
    result = comfy.run(graph)
    clips, count = result.outputs["merge"][0][0], result.outputs["merge"][1][0]
    assert count == 4 and result.ui["show"]["text"] == ["4"]
    assert [c.caption for c in clips] == ["a cat", "sks cat", "one", "two"]
    assert clips[0].frames.shape == (1, 24, 32, 3) and clips[2].frames.shape == (1, 8, 16, 3)
    # ComfyUI re-reads the folder (instead of reusing its cached output) once files change
    cls = comfy.nodes.NODE_CLASS_MAPPINGS["SM_ImageFolderClips"]
    before = cls.IS_CHANGED(folder="sm_test_stills", default_caption="", max_side=1024)
    assert before == cls.IS_CHANGED(folder="sm_test_stills", default_caption="", max_side=1024)
    (folder / "s2.txt").write_text("new caption")
    assert cls.IS_CHANGED(folder="sm_test_stills", default_caption="", max_side=1024) != before


@pytest.mark.parametrize("folder", ["../outside", "/etc"])
def test_image_folder_node_refuses_paths_outside_input(comfy, folder):
    (comfy.input_dir.parent / "outside").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(comfy.input_dir.parent / "outside" / "x.png")
    graph = {"load": {"class_type": "SM_ImageFolderClips", "inputs": {"folder": folder, "default_caption": "",
                                                                      "max_side": 1024}}} | _show(["load", 1])
    result = comfy.run(graph, raise_on_error=False)
    assert result.error is not None
    assert "inside ComfyUI's input folder" in result.error["exception_message"]


def test_video_folder_node_missing_folder_message(comfy):
    graph = {"load": {"class_type": "SM_VideoFolderClips", "inputs": {
        "folder": "no_such_videos", "frames": 16, "stride": 1, "default_caption": "", "max_side": 1024}}}
    result = comfy.run(graph | _show(["load", 1]), raise_on_error=False)
    assert "'no_such_videos' not found" in result.error["exception_message"]


def test_generate_prior_clips_node_reports_progress_over_all_clips(comfy, tiny_files):
    comfy.add_model("checkpoints", "sm_data_tiny_base.safetensors", tiny_files.checkpoint)
    comfy.add_model("animatediff_models", "sm_data_tiny_mm_v2.safetensors", tiny_files.motion_files["v2"])
    graph = {
        "load": {"class_type": "SM_LoadVideoModel", "inputs": {"ckpt_name": "sm_data_tiny_base.safetensors",
                                                               "motion_module": "sm_data_tiny_mm_v2.safetensors",
                                                               "dtype": "auto"}},
        "gen": {"class_type": "SM_GeneratePriorClips", "inputs": {
            "video_model": ["load", 0], "prompts": "a dog running\nwaves", "count": 2, "seed": 3, "frames": 2,
            "width": 64, "height": 64, "steps": 1, "cfg": 2.0}},
    } | _show(["gen", 1])
    result = comfy.run(graph)
    clips = result.outputs["gen"][0][0]
    assert [tuple(c.frames.shape) for c in clips] == [(2, 64, 64, 3)] * 2
    assert [c.caption for c in clips] == ["a dog running", "waves"]
    progress = [(p["value"], p["max"]) for p in result.events("progress") if p["node"] == "gen"]
    assert progress == [(1, 2), (2, 2)]
