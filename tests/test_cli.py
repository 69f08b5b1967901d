"""The training CLI: the same training as the nodes from a JSON config, single process, under
``accelerate launch`` with two CPU processes, and its refusals of bad configs."""
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapters import cli, loading, training
from adapters.motion_adapter import MotionAdapter
from adapters.spatial_adapters import SpatialAdapters

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = (sys.executable, "-m", "accelerate.commands.accelerate_cli")  # the `accelerate` command, any venv


def _frame(i, size=32):
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 2] = 80
    img[8:20, 2 + 2 * i:12 + 2 * i] = 255  # a square moving right
    return img


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A video folder (an H.264 .mp4 and a .gif) and an image folder, written like a user's."""
    import av
    root = tmp_path_factory.mktemp("media")
    videos, images = root / "videos", root / "images"
    videos.mkdir()
    images.mkdir()
    with av.open(str(videos / "a.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(6):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(_frame(i), format="rgb24")))
        out.mux(stream.encode())
    (videos / "a.txt").write_text("a square moving right")
    gif = [Image.fromarray(_frame(i)) for i in range(6)]
    gif[0].save(videos / "b.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 + 80 * i, np.uint8)).save(images / f"still_{i}.png")
    return types.SimpleNamespace(videos=videos, images=images)


def _config(folder, name, **cfg):
    path = folder / name
    path.write_text(json.dumps(cfg, default=str))
    return path


def _motion_cfg(folder, tiny_files, media, steps, **change):
    cfg = dict(kind="motion", checkpoint=str(tiny_files.checkpoint), motion_module=str(tiny_files.motion_files["v2"]),
               width=32, height=32, out="out/motion.safetensors",
               videos={"folder": str(media.videos), "frames": 4, "caption": "a video"},
               settings={"steps": steps, "rank": 2, "frames": 4, "learning_rate": 1e-3})
    return _config(folder, "motion.json", **{**cfg, **change})


def _cli(*args, launcher=(sys.executable, "-m"), timeout=120, **env):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **env)
    return subprocess.run([*map(str, launcher), "adapters.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def motion_file(tmp_path_factory, tiny_files, media):
    folder = tmp_path_factory.mktemp("cli_motion")
    cfg = _motion_cfg(folder, tiny_files, media, steps=3)
    run = _cli("train", cfg, "--device", "cpu")
    assert run.returncode == 0, run.stderr
    path = folder / "out" / "motion.safetensors"  # relative to the config file
    assert f"saved {path}" in run.stdout and "steps 3" in run.stdout and "mean loss of the last 3 steps" in run.stdout
    # the freeze check on the videos' caption: 3 steps cannot freeze video, and the CLI says so
    assert "Motion Adapter check (2 prompt(s) x 2 seed(s), 10 steps)" in run.stdout, run.stdout
    assert "WARNING: this Motion Adapter does not freeze video" in run.stdout
    return path


def test_train_motion(motion_file):
    adapter = MotionAdapter.load(motion_file)
    assert int(adapter.metadata["step"]) == 3 and adapter.rank == 2
    assert any(p.abs().sum() > 0 for p in adapter.up.values())  # it trained


def test_train_spatial_with_motion_adapter_and_injection(tmp_path, tiny_files, media, motion_file):
    cfg = _config(tmp_path, "spatial.json", kind="spatial", checkpoint=str(tiny_files.checkpoint),
                  motion_module=str(tiny_files.motion_files["v2"]), motion_adapter=str(motion_file),
                  inject={"checkpoint": str(tiny_files.custom_checkpoint), "weight": 1.0},
                  stills={"folder": str(media.images), "caption": "a grey square"},
                  videos={"folder": str(media.videos), "frames": 4}, width=32, height=32,
                  out=str(tmp_path / "sp.safetensors"),
                  settings={"steps": 2, "rank": 2, "frames": 4, "target_mode": "block_outputs"})
    run = _cli("train", cfg, "--device", "cpu")
    assert run.returncode == 0, run.stderr
    adapter = SpatialAdapters.load(tmp_path / "sp.safetensors")
    assert int(adapter.metadata["step"]) == 2 and adapter.metadata["customized"] == "custom.safetensors"
    assert all(t.endswith(("proj_out", "conv2")) for t in adapter.targets)
    # the Motion Adapter it trained against, checked on the injected model with the stills' caption
    assert "Motion Adapter check (1 prompt(s) x 2 seed(s), 10 steps)" in run.stdout, run.stdout
    assert "of the customized model's own motion" in run.stdout
    assert "WARNING: the Motion Adapter does not freeze this customized model" in run.stdout


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "unknown key 'colour' in the config"),
    ({"settings": {"steps": 2, "learnin_rate": 1}}, "unknown key 'learnin_rate' in settings"),
    ({"settings": {"steps": "ten"}}, "settings.steps must be an integer"),
    ({"kind": "video"}, "'kind' must be"),
    ({"videos": {"folder": "no/such/folder"}}, "videos.folder 'no/such/folder' not found"),
    ({"videos": None}, "missing 'videos'"),
    ({"inject": {"checkpoint": "x.safetensors"}}, "only apply to kind \"spatial\""),
    ({"check": {"steps": "ten"}}, "check.steps must be an integer"),
    ({"check": {"prompts": ["a dog", 3]}}, r"check.prompts\[1\] must be a string"),
    ({"check": {"seeds": []}}, "may not be empty lists"),
    ({"kind": "spatial", "stills": {"folder": "s"}, "inject": {"checkpoint": "c.safetensors"},
      "settings": {"interleaved": True}, "check": {"steps": 4}}, "an interleaved run does not train with"),
])
def test_bad_config_names_the_config(tmp_path, tiny_files, media, change, message):
    cfg = _motion_cfg(tmp_path, tiny_files, media, steps=1, **change)
    with pytest.raises(cli.ConfigError, match=message) as e:  # in process: fast; the CLI prints this message
        cli.read_config(cfg)
    assert str(e.value).startswith(f"{cfg}: ")


@pytest.mark.parametrize("change, message", [({"colour": "red"}, "unknown key 'colour'"),
                                             ({"videos": {"folder": "gone"}}, "videos.folder 'gone' not found")])
def test_bad_config_exits_nonzero(tmp_path, tiny_files, media, change, message):
    cfg = _motion_cfg(tmp_path, tiny_files, media, steps=1, **change)
    run = _cli("train", cfg)
    assert run.returncode == 1 and f"error: {cfg}: " in run.stderr and message in run.stderr, run.stderr


def test_dry_run_loads_nothing(tmp_path, tiny_files, media):
    cfg = _motion_cfg(tmp_path, tiny_files, media, steps=1)
    run = _cli("train", cfg, "--dry-run")
    assert run.returncode == 0, run.stderr
    assert "config OK" in run.stdout and str(tmp_path / "out" / "motion.safetensors") in run.stdout
    assert not (tmp_path / "out").exists()


def test_two_cpu_processes_under_accelerate_launch(tmp_path, tiny_files, media):
    """``accelerate launch --cpu --num_processes 2`` would start ONE process (accelerate spreads CPU
    processes only through mpirun); --multi_gpu makes torchrun start two, and --device cpu puts
    them on gloo."""
    cfg = _motion_cfg(tmp_path, tiny_files, media, steps=2)
    run = _cli("train", cfg, "--device", "cpu", timeout=180, launcher=(
        *ACCELERATE, "launch", "--multi_gpu", "--num_processes", 2, "--num_machines", 1, "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", 0, "-m"), HF_HOME=str(tmp_path / "hf"))  # no user config
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 processes" in run.stdout and run.stdout.count("saved ") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["motion.safetensors"]
    adapter = MotionAdapter.load(tmp_path / "out" / "motion.safetensors")
    assert int(adapter.metadata["step"]) == 2 and adapter.metadata["processes"] == 2


def test_one_process_accelerator_equals_plain_training(tmp_path, tiny_files):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    model = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])
    g = torch.Generator().manual_seed(0)
    clips = [types.SimpleNamespace(latents=torch.randn(4, 4, 4, 4, generator=g), caption=f"clip {i}") for i in range(3)]
    s = training.TrainSettings(steps=3, learning_rate=1e-3, rank=2, frames=4, seed=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only fight over a busy machine's cores (10x slower)
    try:
        plain = training.train(model, MotionAdapter, s, tmp_path / "plain.safetensors", custom_clips=clips)
        acc = Accelerator(cpu=True)
        assert acc.num_processes == 1
        with_acc = training.train(model, MotionAdapter, s, tmp_path / "acc.safetensors", custom_clips=clips, accelerator=acc)
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
    assert [l for _, l, _ in plain.losses] == [l for _, l, _ in with_acc.losses]
    for name in plain.adapter.targets:
        for a, b in zip(plain.adapter.factors(name), with_acc.adapter.factors(name)):
            assert torch.equal(a, b)


def test_ctrl_c_saves_and_resume_goes_on(tmp_path, tiny_files, media):
    import re
    import signal
    import threading
    cfg = _motion_cfg(tmp_path, tiny_files, media, steps=100000)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "train", str(cfg), "--device", "cpu"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    err = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 60
    while not re.search(r"\b[1-9]\d*/100000", "".join(err)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)  # not communicate(): it would race the reader thread for stderr
    reader.join(10)
    out = proc.stdout.read()
    path = tmp_path / "out" / "motion.safetensors"
    message = re.search(r"interrupted at step (\d+): what was trained is saved in (\S+);", "".join(err))
    assert proc.returncode == 130 and message and message[2] == str(path), out + "".join(err)
    step = int(message[1])
    assert step >= 1 and int(MotionAdapter.load(path).metadata["step"]) == step
    # resume in this process: one more step, into the same file
    raw = json.loads(cfg.read_text())
    raw["resume"], raw["settings"]["steps"] = "out/motion.safetensors", step + 1
    cfg.write_text(json.dumps(raw))
    from accelerate.state import AcceleratorState
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["train", str(cfg), "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
    assert int(MotionAdapter.load(path).metadata["step"]) == step + 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["motion.safetensors"]
