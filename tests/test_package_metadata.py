"""pyproject.toml is what the Comfy Registry reads: complete, in step with requirements.txt, and
claiming no older ComfyUI than the one the suite runs the pack in."""
import re
import tomllib
from pathlib import Path

from comfy_host import comfyui_path

REPO = Path(__file__).resolve().parent.parent


def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_lines():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def test_dependencies_are_requirements_txt():
    from setuptools.config.pyprojecttoml import read_configuration
    project = read_configuration(REPO / "pyproject.toml")["project"]
    assert project["dependencies"] == requirement_lines()
    assert not any(re.match(r"torch\b", d) for d in project["dependencies"])  # the host owns torch


def test_registry_fields():
    data = pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"]
    licence = REPO / project["license"]["file"]
    assert licence.is_file() and "Permission is hereby granted" in licence.read_text()
    assert comfy["PublisherId"] and comfy["DisplayName"]
    for value in [comfy.get("Icon"), *data["project"].get("urls", {}).values()]:
        if value is not None:
            assert re.match(r"https://[^/]+\.[a-z]+/", value) and "example" not in value, value


def test_requires_comfyui_is_the_tested_version():
    text = (comfyui_path() / "comfyui_version.py").read_text()
    tested = re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)
    assert pyproject()["tool"]["comfy"]["requires-comfyui"] == f">={tested}"
