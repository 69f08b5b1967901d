"""Shared test fixtures.

The ComfyUI host itself (in-process and server) lives in scripts/comfy_host.py, shared with
the demo; tiny model files in model_files.py.
"""
from pathlib import Path

import pytest

from comfy_host import ComfyServer, InProcessComfy, comfyui_path, make_base
from model_files import comfy_files, tiny_files  # noqa: F401  (pytest fixtures)


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory) -> Path:
    """The session's ComfyUI base directory, shared by both hosts."""
    return make_base(tmp_path_factory.mktemp("comfy_base"))


@pytest.fixture(scope="session")
def comfy(comfy_base) -> InProcessComfy:
    """ComfyUI in this process (built-in nodes + the pack). Check .pack_loaded / .pack_log."""
    return InProcessComfy(comfy_base, comfyui_path())


@pytest.fixture(scope="session")
def comfy_server(comfy_base):
    """A real ComfyUI server on 127.0.0.1, killed at session end."""
    srv = ComfyServer(comfy_base, comfyui_path())
    yield srv
    srv.stop()


# The unit tier (`bash scripts/test.sh -m "not full"`): the library on tiny models.
# Everything that boots ComfyUI, a browser or the toy world's shipped models, or runs the
# benchmarks, is also in the full suite that CI and `bash scripts/test.sh` run.
FULL_FIXTURES = {"comfy", "comfy_server", "comfy_base", "browser", "served", "editor"}
FULL_FILES = {"test_toy_models.py", "test_toy_comparison.py", "test_benchmarks.py",
              "test_workflows_in_browser.py", "test_motion_adapter_effect.py", "test_exports.py",
              "test_model_patch.py", "test_injection_report.py",
              "test_mechanism.py"}
# Tests that train for many steps or run whole videos (several seconds each on 2 cores).
FULL_TESTS = {"test_spatial_training_fits_the_customized_stills_and_keeps_the_prior",
              "test_absorber_is_frozen_while_the_temporal_lora_trains_and_absent_after",
              "test_resume_after_cancel_matches_uninterrupted_run", "test_caption_dropout_trains_on_the_empty_prompt",
              "test_injection_changes_the_video", "test_seed_is_reproducible_and_matters",
              "test_long_video_needs_context", "test_absorber_training_bypasses_the_temporal_layers",
              "test_two_temporal_loras_add_up", "test_gradient_checkpointing_trains_the_same_adapter",
              "test_interleaved_baseline_turns_temporal_layers_off_for_stills",
              "test_two_cpu_processes_under_accelerate_launch", "test_strength_and_schedule_window",
              "test_denoise_keeps_the_input", "test_motion_merged_equals_unmerged_and_zero_scale_is_identity",
              "test_schedule_of_ones_equals_no_schedule_and_constant_equals_scaled_patches",
              "test_gradients_equal_uncheckpointed_with_adapter_hooks", "test_schedule_switches_once_at_steps_minus_k",
              "test_animatelcm_follows_ade_for_its_layout", "test_v1_training_with_checkpointing_sees_the_frames",
              "test_sliding_windows_slice_control_frames", "test_patches_are_undone",
              "test_checkpointing_saves_less_and_restores_the_model"}


def pytest_configure(config):
    config.addinivalue_line("markers", "full: only in the full suite (ComfyUI, browser, toy models, "
                                       "benchmarks, long training); deselect with -m 'not full'")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (FULL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in FULL_FILES
                or item.originalname in FULL_TESTS):
            item.add_marker(pytest.mark.full)
