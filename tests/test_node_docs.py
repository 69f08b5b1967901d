"""Every node explains itself in the editor: a description, and a tooltip on every input and
output, checked in the /object_info JSON a real ComfyUI server sends the frontend."""
import re

import pytest

from comfy_host import PACK_NAME

# words that belong in the project's history, not in what an artist reads
HISTORY = re.compile(r"\b(session|issue|ticket|TODO|FIXME|measured|benchmark)\b|#\d", re.IGNORECASE)
# speed and memory numbers go stale with every machine and version
MEASUREMENT = re.compile(r"\d\s*(GiB|MiB|GB|MB|ms|seconds|s/step|it/s|min)\b")
MAX_TOOLTIP, MAX_DESCRIPTION = 320, 420  # one or two sentences


@pytest.fixture(scope="module")
def pack_info(comfy_server):
    info = comfy_server.object_info()
    pack = {name: node for name, node in info.items()
            if node.get("python_module") == f"custom_nodes.{PACK_NAME}"}
    assert len(pack) >= 25, f"the pack's nodes are not in /object_info: {sorted(pack)}"
    return pack


def _style_problems(where, text, limit):
    problems = []
    if not isinstance(text, str) or len(text.strip()) < 12:
        return [f"{where}: missing or too short ({text!r})"]
    if len(text) > limit:
        problems.append(f"{where}: {len(text)} characters (at most {limit}: one or two sentences)")
    for pattern, what in ((HISTORY, "history"), (MEASUREMENT, "a measurement")):
        m = pattern.search(text)
        if m:
            problems.append(f"{where}: mentions {what} ({m.group(0)!r})")
    return problems


def test_every_node_input_and_output_is_explained(pack_info):
    problems = []
    for name, node in sorted(pack_info.items()):
        problems += _style_problems(f"{name} description", node.get("description"), MAX_DESCRIPTION)
        for section in ("required", "optional"):
            for inp, spec in node["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                problems += _style_problems(f"{name}.{inp} tooltip", opts.get("tooltip"), MAX_TOOLTIP)
        tips = node.get("output_tooltips")
        if tips is None or len(tips) != len(node["output"]):
            problems.append(f"{name}: output_tooltips {tips!r} do not match its outputs {node['output']}")
        else:
            for out, tip in zip(node["output_name"], tips):
                problems += _style_problems(f"{name} output {out} tooltip", tip, MAX_TOOLTIP)
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_bare_node():
    """The style check itself: a missing tooltip, history and measurements are reported."""
    assert _style_problems("x", None, 100)
    assert _style_problems("x", "Saves the adapter (see #12).", 100)  # a reference to the tracker
    assert _style_problems("x", "Peaks at 7.3 GiB instead of 21 GiB on a big GPU.", 100)
    assert _style_problems("x", "A long tooltip. " * 30, 100)
    assert not _style_problems("x", "How strongly the adapter acts: 1 as trained.", 100)


FILE_INPUTS = {"ckpt_name", "motion_module", "lora_name", "adapter_name", "control_net_name", "clip_model",
               "resume_from", "folder"}


def test_every_node_that_reads_a_file_can_tell_when_it_changed(comfy):
    """Nodes with a file (or folder) input define IS_CHANGED, so ComfyUI re-runs them when the
    file is rewritten; tests/test_node_rerun.py shows it working."""
    missing = []
    for name in sorted(comfy.pack_nodes):
        cls = comfy.nodes.NODE_CLASS_MAPPINGS[name]
        spec = cls.INPUT_TYPES()
        inputs = set(spec.get("required", {})) | set(spec.get("optional", {}))
        if inputs & FILE_INPUTS and not hasattr(cls, "IS_CHANGED"):
            missing.append(f"{name} ({', '.join(sorted(inputs & FILE_INPUTS))})")
    assert not missing, "no IS_CHANGED: " + "; ".join(missing)
