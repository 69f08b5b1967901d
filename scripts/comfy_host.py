"""A real ComfyUI (0.3.75, installed by scripts/setup.sh) hosting this pack, headless: used by
the tests (fixtures in tests/conftest.py) and by the demo (scripts/demo.py).

Two hosts share one session base directory laid out like a ComfyUI install
(models/, input/, output/, temp/, user/, custom_nodes/Still-Moving -> repo root):

* ``comfy``: ComfyUI imported into the pytest process. Fast (~10 s once), runs graphs
  through ComfyUI's own validate_prompt + PromptExecutor and records the messages the
  frontend would get.
* ``comfy_server``: ``python main.py --cpu`` on a loopback port, driven over HTTP exactly
  like the browser does. Started lazily, only by tests that ask for it.

Why each boot step is there: the team notes, shared/notes/comfyui-host.md.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


PACK_DIR = Path(__file__).resolve().parents[1]
PACK_NAME = "Still-Moving"  # folder name under custom_nodes/, as a user's install would have
# Model folders the tests may fill. The last three are not built into ComfyUI; the session's
# extra_model_paths.yaml registers them (the pack may register them too, as ADE does).
MODEL_KINDS = ("checkpoints", "vae", "loras", "controlnet",
               "animatediff_models", "animatediff_motion_lora", "still_moving")
EXTRA_KINDS = ("animatediff_models", "animatediff_motion_lora", "still_moving")


class ComfyError(Exception):
    """A graph was rejected by validation or failed while executing; ``.error`` has the details."""

    def __init__(self, message: str, error: dict):
        super().__init__(f"{message}: {error}")
        self.error = error


def comfyui_path() -> Path:
    """The ComfyUI tree: $COMFYUI_PATH, else where scripts/setup.sh puts it."""
    home = Path(os.environ.get("STILL_MOVING_HOME", Path.home() / ".cache" / "still-moving"))
    path = Path(os.environ.get("COMFYUI_PATH", home / "comfyui"))
    if not (path / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI at {path}; run scripts/setup.sh (or scripts/test.sh)")
    return path


def make_base(base: Path) -> Path:
    """Lay out a ComfyUI base directory with the pack installed as a custom node."""
    for sub in ("input", "output", "temp", "user", "custom_nodes"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for kind in MODEL_KINDS:
        (base / "models" / kind).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(PACK_DIR, target_is_directory=True)
    lines = ["still_moving_tests:", f"    base_path: {base / 'models'}"]
    lines += [f"    {kind}: {kind}" for kind in EXTRA_KINDS]
    (base / "extra_model_paths.yaml").write_text("\n".join(lines) + "\n")
    return base


def add_model_file(base: Path, kind: str, name: str, src: Path | str | bytes) -> Path:
    """Put a model file where ComfyUI looks: bytes are written, a path is symlinked."""
    dest = base / "models" / kind / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    if isinstance(src, bytes):
        dest.write_bytes(src)
    else:
        dest.symlink_to(Path(src).resolve())
    return dest


@dataclass
class RunResult:
    """What one in-process execution produced.

    ui:       node id -> the node's ui dict (what /history shows, e.g. {"images": [...]})
    outputs:  node id -> the node's raw return values (one list per output slot), for every
              node that executed
    messages: (event, data) pairs sent to the frontend: execution_start, executing,
              progress, executed, execution_success / execution_error, plus anything the
              pack sends through PromptServer.instance.send_sync
    error:    the execution_error data, or None
    """
    ui: dict
    outputs: dict
    messages: list = field(default_factory=list)
    error: dict | None = None

    def events(self, name: str) -> list:
        return [data for event, data in self.messages if event == name]


class InProcessComfy:
    """ComfyUI imported into this process, with built-in nodes and the pack loaded."""

    def __init__(self, base: Path, comfy_dir: Path, cpu: bool = True):
        self.base, self.comfy_dir = base, comfy_dir
        self.models_dir = base / "models"
        self.output_dir, self.input_dir = base / "output", base / "input"
        # ComfyUI's top-level module names; the pack has a `nodes/` folder of its own.
        for name in ("nodes", "utils", "execution", "server", "folder_paths", "comfy"):
            mod = sys.modules.get(name)
            origin = getattr(mod, "__file__", None) or next(iter(getattr(mod, "__path__", [])), "")
            if mod is not None and not Path(origin).resolve().is_relative_to(comfy_dir.resolve()):
                raise RuntimeError(f"`{name}` was imported from {origin} before ComfyUI booted; "
                                   "import pack code through the pack, not as top-level modules")
        sys.path.insert(0, str(comfy_dir))
        import comfy.options  # noqa: F401  (must precede cli_args: no argv parsing)
        from comfy.cli_args import args
        args.cpu = cpu  # before comfy.model_management is imported; False only where there is CUDA
        args.base_directory = str(base)  # read once, when folder_paths is imported
        import folder_paths
        # `nodes` puts comfy/ first on sys.path, after which `import utils` finds comfy/utils.py.
        import utils.extra_config
        import utils.install_util  # noqa: F401
        import nodes
        import server

        self.folder_paths, self.nodes = folder_paths, nodes
        utils.extra_config.load_extra_path_config(str(base / "extra_model_paths.yaml"))
        # A real PromptServer, never started: packs may register routes or send events at import.
        self.server = server.PromptServer(asyncio.new_event_loop())
        self.server.send_sync = self._record
        self.server.last_prompt_id = None
        self.messages: list = []
        self._hook_progress()

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        self.builtin_nodes = set(nodes.NODE_CLASS_MAPPINGS)
        self.pack_loaded, self.pack_log = self._load_pack()

    def _record(self, event, data, sid=None):
        self.messages.append((event, data))

    def _hook_progress(self):
        """What main.hijack_progress does, minus the websocket."""
        import comfy.model_management
        import comfy.utils
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context
        srv = self.server

        def hook(value, total, preview_image, prompt_id=None, node_id=None):
            ctx = get_executing_context()
            prompt_id = prompt_id or (ctx.prompt_id if ctx else srv.last_prompt_id)
            node_id = node_id or (ctx.node_id if ctx else srv.last_node_id)
            comfy.model_management.throw_exception_if_processing_interrupted()
            get_progress_state().update_progress(node_id, value, total, preview_image)
            srv.send_sync("progress", {"value": value, "max": total,
                                       "prompt_id": prompt_id, "node": node_id}, srv.client_id)
            if preview_image is not None:
                srv.send_sync("preview_image", {"node": node_id, "image": preview_image})

        comfy.utils.set_progress_bar_global_hook(hook)

    def _load_pack(self) -> tuple[bool, str]:
        """Load the pack as ComfyUI does at startup; keep its log (load_custom_node swallows errors)."""
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda r: records.append(r.getMessage())
        logging.getLogger().addHandler(handler)
        try:
            ok = asyncio.run(self.nodes.load_custom_node(
                str(self.base / "custom_nodes" / PACK_NAME), ignore=self.builtin_nodes))
        finally:
            logging.getLogger().removeHandler(handler)
        return ok, "\n".join(records)

    @property
    def pack_nodes(self) -> set[str]:
        return set(self.nodes.NODE_CLASS_MAPPINGS) - self.builtin_nodes

    def add_model(self, kind: str, name: str, src: Path | str | bytes) -> Path:
        if kind not in self.folder_paths.folder_names_and_paths:
            self.folder_paths.add_model_folder_path(kind, str(self.models_dir / kind))
        path = add_model_file(self.base, kind, name, src)
        self.folder_paths.filename_list_cache.clear()
        return path

    def run(self, api_graph: dict, raise_on_error: bool = True, outputs: list | None = None) -> RunResult:
        """Validate and execute an API-format graph like the server's prompt worker does.

        A fresh executor each time, so nothing is cached between runs. ``outputs``: run only up
        to these nodes instead of every output node (a benchmark times the graph up to a node).
        """
        import execution
        prompt = copy.deepcopy(api_graph)
        prompt_id = str(uuid.uuid4())
        valid, error, valid_outputs, node_errors = asyncio.run(
            execution.validate_prompt(prompt_id, prompt, None))
        if not valid or node_errors:
            raise ComfyError("invalid prompt", {"error": error, "node_errors": node_errors})
        self.messages = []
        self.server.last_prompt_id = prompt_id
        executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0})
        executor.execute(prompt, prompt_id, {"client_id": "pytest"}, outputs or valid_outputs)
        raw = {}
        for node_id in prompt:
            entry = executor.caches.outputs.get(node_id)
            if entry is not None:
                raw[node_id] = entry.outputs
        errors = [d for e, d in self.messages if e in ("execution_error", "execution_interrupted")]
        result = RunResult(ui=executor.history_result["outputs"], outputs=raw,
                           messages=self.messages, error=errors[0] if errors else None)
        if result.error and raise_on_error:
            raise ComfyError("execution failed", result.error)
        return result


class ComfyServer:
    """`python main.py --cpu` on a free loopback port, with the session base directory.

    front_end_root: a frontend's static folder to serve instead of the installed
    comfyui-frontend-package (ComfyUI's --front-end-root). extra_args: more main.py options.
    """

    def __init__(self, base: Path, comfy_dir: Path, timeout: float = 120, front_end_root: Path | None = None,
                 extra_args=()):
        import requests
        self.http = requests.Session()
        self.http.trust_env = False  # never route loopback through a proxy
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.base = base
        self.log_path = base / "server.log"
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--disable-auto-launch",
               "--base-directory", str(base),
               "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
               "--database-url", "sqlite:///:memory:"]  # not the shared tree's user/comfyui.db
        if front_end_root is not None:
            if not (Path(front_end_root) / "index.html").is_file():
                raise RuntimeError(f"no frontend at {front_end_root} (index.html missing)")
            cmd += ["--front-end-root", str(front_end_root)]
        cmd += list(extra_args)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=comfy_dir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if self.http.get(f"{self.url}/object_info/PreviewImage", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI server not up after {timeout} s:\n{self.log()}")

    def log(self, tail: int = 8000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def object_info(self, name: str | None = None) -> dict:
        """GET /object_info[/name]; {} when the node is not registered."""
        path = f"/object_info/{name}" if name else "/object_info"
        r = self.http.get(self.url + path, timeout=30)
        r.raise_for_status()
        return r.json().get(name, {}) if name else r.json()

    def post_prompt(self, api_graph: dict, client_id: str | None = None) -> str:
        """Queue a graph; client_id: whose websocket gets its events (a browser page's)."""
        r = self.http.post(f"{self.url}/prompt", timeout=30,
                           json={"prompt": api_graph, "client_id": client_id or self.client_id})
        if r.status_code != 200:
            raise ComfyError(f"POST /prompt answered {r.status_code}", r.json())
        return r.json()["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300, raise_on_error: bool = True) -> dict:
        """Poll /history until the prompt is done; return its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.http.get(f"{self.url}/history/{prompt_id}", timeout=30).json().get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if raise_on_error and entry["status"]["status_str"] != "success":
                    raise ComfyError("execution failed", entry["status"])
                return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server died:\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} not done after {timeout} s")

    def run(self, api_graph: dict, **kw) -> dict:
        return self.wait(self.post_prompt(api_graph), **kw)

    def add_model(self, kind: str, name: str, src: Path | str | bytes) -> Path:
        return add_model_file(self.base, kind, name, src)
