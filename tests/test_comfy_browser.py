"""The UI workflows inside the real ComfyUI frontend, driven by a headless Chromium.

Runs only when ``COMFYUI_PATH`` points at a ComfyUI checkout (its Python: ``COMFYUI_PYTHON``, as for
``tests/test_comfy_server.py``, whose server setup is reused) and a Chrome/Chromium executable is found:
``SMITE_BROWSER`` (a path or a name on ``PATH``), else the first of ``chromium-headless-shell``,
``chromium``, ``chromium-browser``, ``google-chrome``, ``chrome`` on ``PATH`` (Debian:
``apt-get install chromium-headless-shell``); skipped otherwise. No Python package is needed: the
browser is spoken to over the Chrome DevTools protocol on a pipe (``--remote-debugging-pipe``).

Each ``workflows/*.json`` is loaded the way the template browser loads it (fetched from
``/api/workflow_templates/<pack>/`` and given to ``app.loadGraphData``); then no node type may be
missing (the frontend's own ``afterConfigureGraph`` list, ``LiteGraph.registered_node_types``, the node
classes), no dialog, toast, console error/warning or exception may appear, every widget value must be
the file's and valid for its widget, the links must be the file's, and ``app.graphToPrompt()`` must
give exactly the API twin in ``workflows/api/``. Then each workflow is queued from the page (as the Run
button does; the Load Checkpoint workflow on 4 frames at 64 px, its checkpoint being a full-size SD 1.5 with
random weights on a CPU), and after the run, in a 1920x1080 window at the workflow's saved zoom, no
node showing a result (image, video or text preview) may overlap another node's box (the rectangles of
the graph's nodes, title bar included) and every node must lie inside the visible canvas. A screenshot of
each is kept in ``SMITE_SCREENSHOTS`` (a folder) when set. ``SMITE_BROWSER_LOG`` (a file path) keeps the
ComfyUI log.
"""

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from graph_runner import API_WORKFLOWS, UI_ONLY, WORKFLOWS
from test_comfy_server import sd15_files  # noqa: F401 - the checkpoint Load Checkpoint lists (workflow 4)

COMFYUI = os.environ.get("COMFYUI_PATH")
BROWSER_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "chrome")


def _find_browser():
    wanted = os.environ.get("SMITE_BROWSER")
    if wanted:
        return shutil.which(wanted) or (wanted if os.access(wanted, os.X_OK) else None)
    return next((path for path in map(shutil.which, BROWSER_NAMES) if path), None)


BROWSER = _find_browser()
pytestmark = [
    pytest.mark.skipif(not COMFYUI or not (Path(COMFYUI) / "main.py").is_file(),
                       reason="set COMFYUI_PATH to a ComfyUI checkout to run the browser test"),
    pytest.mark.skipif(not BROWSER, reason="no Chrome/Chromium found (install chromium-headless-shell or set "
                                           "SMITE_BROWSER)"),
]
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
PAGE_TIMEOUT = 240
SCREEN = (1920, 1080)
RUN_TIMEOUT = float(os.environ.get("SMITE_SERVER_TIMEOUT", "1800"))
# What a run in the page changes (widgets only: the layout under test stays): few frames and steps. The server test
# runs every template as shipped; SMITE_BROWSER_AS_SHIPPED=1 runs them as shipped here too (for the thumbnails).
FAST = {"SMITE_LoadExample": {"frames": 4, "size": 64}, "SMITE_LearnSegmentEmbedding": {"steps": 2, "size": 64},
        "SMITE_InvertVideo": {"size": 64}, "SMITE_InflatedUNetSegment": {"window": 4, "overlap": 2},
        "SMITE_SegmentVideoToFiles": {"size": 64, "window": 8, "overlap": 2}}
PREVIEW_TYPES = ("SaveImage", "PreviewImage", "SaveVideo", "PreviewAny", "SMITE_SegmentVideoToFiles")  # nodes that show a result after a run


class Browser:
    """A headless Chromium and one page, over the DevTools protocol on fds 3/4 (NUL-separated JSON)."""

    def __init__(self, executable: str, profile: Path):
        self.log_path = profile / "browser.log"
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def child_fds():  # runs in the child before exec: the browser reads fd 3 and writes fd 4
            import fcntl

            read_end = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [executable, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-dev-shm-usage", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
                 "--mute-audio", f"--window-size={SCREEN[0]},{SCREEN[1]}", f"--user-data-dir={profile / 'profile'}",
                 "about:blank"],
                preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.writer = os.fdopen(to_browser_w, "wb", buffering=0)
        self.reader = os.fdopen(from_browser_r, "rb")
        self.ids = itertools.count(1)
        self.replies, self.events = {}, []
        self.changed = threading.Condition()
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=True)

    def _read(self):
        buffer = b""
        while chunk := self.reader.read1(1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self.changed:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self.replies[message["id"]] = message
                    else:
                        self.events.append(message)
                self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60):
        message_id = next(self.ids)
        message = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        try:
            self.writer.write(json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise AssertionError(f"the browser has gone:\n{self.log_path.read_text(errors='replace')[-3000:]}")
        with self.changed:
            self.changed.wait_for(lambda: message_id in self.replies or self.closed, timeout)
            reply = self.replies.pop(message_id, None)
        if reply is None:
            raise AssertionError(f"no answer to {method} within {timeout} s:\n"
                                 f"{self.log_path.read_text(errors='replace')[-3000:]}")
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def evaluate(self, expression: str, timeout: float = 120):
        """The JSON value of a JS expression in the page (promises awaited); a thrown error fails."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=True, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise AssertionError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def close(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(20)
        self.writer.close()


def _describe(event: dict) -> str:
    params = event["params"]
    if event["method"] == "Runtime.consoleAPICalled":
        args = [a.get("value", a.get("description", a.get("type"))) for a in params["args"]]
        return f"console.{params['type']}: " + " ".join(map(str, args))[:1500]
    if event["method"] == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return "exception: " + (details.get("exception", {}).get("description") or details.get("text", ""))[:1500]
    entry = params["entry"]
    return f"log {entry['level']} ({entry['source']}): {entry['text']} {entry.get('url', '')}"[:1500]


def _problems(events: list, server_url: str) -> list[str]:
    """Console errors/warnings, uncaught exceptions and error log entries; failed requests to other
    hosts (update checks, the machine may be offline) are not the workflows' doing and are left out."""
    found = []
    for event in events:
        method, params = event["method"], event["params"]
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
            found.append(_describe(event))
        elif method == "Runtime.exceptionThrown":
            found.append(_describe(event))
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            entry = params["entry"]
            if entry["source"] == "network" and not entry.get("url", "").startswith(server_url):
                continue
            found.append(_describe(event))
    return found


READY_JS = "!!(window.app && app.graph && app.canvas && window.LiteGraph && app.extensionManager)"

LOAD_JS = r"""
async (pack, name) => {
  if (!window.__smiteHooked) {
    window.__smiteHooked = true;
    app.registerExtension({name: "smite.browser-test", afterConfigureGraph(missing) {
      window.__smiteMissing = (missing || []).map(m => typeof m === "string" ? m : m.type);
    }});
  }
  window.__smiteMissing = null;
  const response = await fetch(`api/workflow_templates/${pack}/${encodeURIComponent(name)}.json`);
  if (!response.ok) throw new Error(`template ${name}: HTTP ${response.status}`);
  const file = await response.json();
  await app.loadGraphData(file, true, true, `${name}.json`);  // as the template browser does
  await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
  await new Promise(done => setTimeout(done, 500));
  const visible = selector => [...document.querySelectorAll(selector)]
    .filter(e => e.getClientRects().length).map(e => e.innerText.trim().slice(0, 800));
  const nodes = app.graph.nodes.map(n => ({
    id: n.id, type: n.type, registered: n.type in LiteGraph.registered_node_types,
    comfy_class: n.constructor.comfyClass ?? null, has_errors: !!n.has_errors,
    widgets: (n.widgets || []).map(w => ({
      name: w.name, type: w.type, value: w.value,
      values: Array.isArray(w.options?.values) ? w.options.values : null,
      min: w.options?.min ?? null, max: w.options?.max ?? null})),
  }));
  const serialized = app.graph.serialize();
  const prompt = await app.graphToPrompt();
  return {
    missing: window.__smiteMissing, nodes, dialogs: visible(".p-dialog"), toasts: visible(".p-toast-message"),
    serialized: serialized.nodes.map(n => ({id: n.id, type: n.type, widgets_values: n.widgets_values ?? []})),
    links: serialized.links.map(l => Array.isArray(l) ? l.slice(0, 6)
      : [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]),
    prompt: prompt.output,
  };
}
"""


@pytest.fixture(scope="module")
def frontend(tmp_path_factory, sd15_files):  # noqa: F811
    from test_comfy_server import EXPECTED, PACK_NAME, Server, _models

    base = tmp_path_factory.mktemp("comfy_browser")
    server = Server(base / "comfy", **_models(sd15_files))
    browser = None
    try:
        server.wait_ready()
        # a fresh user would first see the "Get Started with a Template" dialog: this one has been here before
        status, _ = server.post("/api/settings/Comfy.TutorialCompleted", True)
        assert status == 200, status
        profile = base / "browser"
        profile.mkdir()
        browser = Browser(BROWSER, profile)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": SCREEN[0], "height": SCREEN[1],
                                                            "deviceScaleFactor": 1, "mobile": False}, session=True)
        browser.send("Page.navigate", {"url": server.url}, session=True)
        deadline = time.time() + PAGE_TIMEOUT
        while not browser.evaluate(READY_JS):
            assert time.time() < deadline, (f"the frontend did not start within {PAGE_TIMEOUT} s:\n"
                                            + "\n".join(map(_describe, browser.events[-30:])))
            time.sleep(1)
        time.sleep(2)  # settings, templates and the first (default) graph settle
        browser.server_url, browser.pack, browser.expected, browser.loaded = server.url, PACK_NAME, EXPECTED, {}
        browser.server = server
        yield browser
    finally:
        if browser is not None:
            browser.close()
        server.stop()
        keep = os.environ.get("SMITE_BROWSER_LOG")
        if keep:
            shutil.copy(server.log_path, keep)


def _load(frontend, name: str) -> dict:
    if name not in frontend.loaded:
        mark = len(frontend.events)
        result = frontend.evaluate(f"({LOAD_JS})({json.dumps(frontend.pack)}, {json.dumps(name)})")
        result["problems"] = _problems(frontend.events[mark:], frontend.server_url)
        frontend.loaded[name] = result
    return frontend.loaded[name]


def test_frontend_starts_and_registers_every_smite_node(frontend):
    info = frontend.evaluate("({version: window.__COMFYUI_FRONTEND_VERSION__ ?? null, "
                             "types: Object.keys(LiteGraph.registered_node_types)})")
    assert frontend.expected <= set(info["types"]), sorted(frontend.expected - set(info["types"]))
    product = frontend.send("Browser.getVersion")["product"]
    sys.stderr.write(f"\nComfyUI frontend {info['version']}, {product}, {len(info['types'])} node types\n")
    # the pack ships no frontend code; whatever the core frontend logs at start-up is not ours to fix,
    # but nothing may point at the pack
    ours = [p for p in _problems(frontend.events, frontend.server_url) if "smite" in p.lower()]
    assert ours == [], ours


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_loads_with_no_missing_nodes_or_errors(frontend, name):
    file = json.loads((WORKFLOWS / f"{name}.json").read_text())
    loaded = _load(frontend, name)
    assert loaded["missing"] == [], f"missing node types: {loaded['missing']}"
    assert loaded["dialogs"] == [] and loaded["toasts"] == [], (loaded["dialogs"], loaded["toasts"])
    assert loaded["problems"] == [], "\n".join(loaded["problems"])
    assert sorted(n["id"] for n in loaded["nodes"]) == sorted(n["id"] for n in file["nodes"])
    for node in loaded["nodes"]:
        assert node["registered"] and not node["has_errors"], node
        assert node["comfy_class"] == node["type"] or node["type"] in UI_ONLY, node
        for widget in node["widgets"]:
            value, where = widget["value"], f"node {node['id']} {node['type']}.{widget['name']}"
            if widget["values"] is not None:
                assert value in widget["values"], f"{where}: {value!r} is not one of {widget['values']}"
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert widget["min"] is None or value >= widget["min"], f"{where}: {value} < {widget['min']}"
                assert widget["max"] is None or value <= widget["max"], f"{where}: {value} > {widget['max']}"
    in_file = {n["id"]: n.get("widgets_values", []) for n in file["nodes"]}
    for node in loaded["serialized"]:
        assert node["widgets_values"] == in_file[node["id"]], (node, in_file[node["id"]])
    assert sorted(map(tuple, loaded["links"])) == sorted(tuple(link[:6]) for link in file["links"])
    smite = sum(n["type"].startswith("SMITE_") for n in loaded["nodes"])
    sys.stderr.write(f"\n{name}: {len(loaded['nodes'])} nodes ({smite} SMITE), {len(loaded['links'])} links, "
                     f"none missing\n")


@pytest.mark.parametrize("name", NAMES)
def test_frontend_prompt_is_the_api_twin(frontend, name):
    api = json.loads((API_WORKFLOWS / f"{name}.json").read_text())
    prompt = _load(frontend, name)["prompt"]
    info = frontend.server.get("/object_info")
    declared = {k: {**v["input"].get("required", {}), **v["input"].get("optional", {})} for k, v in info.items()}
    differences = []
    for nid in sorted(set(api) | set(prompt), key=int):
        ours, theirs = api.get(nid), prompt.get(nid)
        if ours is None or theirs is None:
            differences.append(f"node {nid}: only in {'the frontend' if ours is None else 'the API file'}")
            continue
        if ours["class_type"] != theirs.get("class_type"):
            differences.append(f"node {nid}: {ours['class_type']} vs frontend {theirs.get('class_type')}")
        theirs_inputs = theirs.get("inputs", {})
        for key in sorted(set(ours["inputs"]) | set(theirs_inputs)):
            a, b = ours["inputs"].get(key, "<absent>"), theirs_inputs.get(key, "<absent>")
            if a == "<absent>" and key not in declared.get(ours["class_type"], {}):
                continue  # a display-only widget of the frontend (Preview Any's text box): the server ignores it
            if a != b:
                differences.append(f"node {nid} {ours['class_type']}.{key}: API file {a!r}, frontend {b!r}")
        if ours.get("_meta") != theirs.get("_meta"):
            differences.append(f"node {nid} _meta: {ours.get('_meta')} vs frontend {theirs.get('_meta')}")
    assert differences == [], "\n".join(differences)


RUN_JS = r"""
async (fast) => {
  for (const node of app.graph.nodes) {  // fewer frames and steps where asked (widgets only; the layout stays)
    for (const widget of node.widgets || []) {
      const value = (fast[node.type] || {})[widget.name];
      if (value !== undefined) widget.value = value;
    }
  }
  window.__smiteRun = {done: false, error: null};
  const { api } = await import("/scripts/api.js");
  api.addEventListener("execution_success", () => { window.__smiteRun.done = true; });
  api.addEventListener("execution_error", (e) => { window.__smiteRun.error = e.detail?.exception_message ?? "error"; });
  await app.queuePrompt(0, 1);
  return true;
}
"""

LAYOUT_JS = r"""
() => {
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const canvas = app.canvas.canvas.getBoundingClientRect();
  const ds = app.canvas.ds;
  const nodes = app.graph.nodes.map(n => {
    const [x, y] = n.pos, [w, h] = n.size;
    const box = [x, y - title, w, h + title];
    return {id: n.id, type: n.type, title: n.title, box,
            shown: !!(app.nodeOutputs?.[n.id] || (n.imgs && n.imgs.length)),
            screen: [(box[0] + ds.offset[0]) * ds.scale, (box[1] + ds.offset[1]) * ds.scale,
                     box[2] * ds.scale, box[3] * ds.scale]};
  });
  return {nodes, canvas: [canvas.left, canvas.top, canvas.width, canvas.height], scale: ds.scale,
          window: [window.innerWidth, window.innerHeight]};
}
"""


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _wait_for_run(frontend, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = frontend.evaluate("window.__smiteRun")
        assert not state["error"], state["error"]
        if state["done"]:
            return
        time.sleep(2)
    raise AssertionError(f"the run did not finish within {timeout} s:\n{frontend.server.text()[-3000:]}")


@pytest.mark.parametrize("name", NAMES)
def test_after_a_run_no_preview_is_covered_and_the_workflow_fits_the_screen(frontend, name):
    frontend.evaluate(f"({LOAD_JS})({json.dumps(frontend.pack)}, {json.dumps(name)})")  # this one on the canvas
    fast = {} if os.environ.get("SMITE_BROWSER_AS_SHIPPED") == "1" else FAST
    started = time.time()
    frontend.evaluate(f"({RUN_JS})({json.dumps(fast)})")
    _wait_for_run(frontend, RUN_TIMEOUT)
    time.sleep(3)  # previews load and nodes grow to show them
    frontend.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    layout = frontend.evaluate(f"({LAYOUT_JS})()")
    shots = os.environ.get("SMITE_SCREENSHOTS")
    if shots:
        image = frontend.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        Path(shots).mkdir(parents=True, exist_ok=True)
        (Path(shots) / f"{name}.png").write_bytes(base64.b64decode(image))
    nodes = layout["nodes"]
    previews = [n for n in nodes if n["type"] in PREVIEW_TYPES]
    assert previews and all(n["shown"] for n in previews), [(n["title"], n["shown"]) for n in previews]
    covered = [(p["title"], n["title"]) for p in previews for n in nodes if n["id"] != p["id"]
               and _overlap(p["box"], n["box"])]
    assert covered == [], covered
    left, top, width, height = layout["canvas"]
    assert (left + width, top + height) <= SCREEN, layout["canvas"]
    outside = [n["title"] for n in nodes if n["screen"][0] < 56 or n["screen"][1] < 0  # the sidebar's icons
               or n["screen"][0] + n["screen"][2] > width or n["screen"][1] + n["screen"][3] > height]
    assert outside == [], (outside, layout["scale"], layout["canvas"])
    sys.stderr.write(f"\n{name}: ran in {time.time() - started:.0f} s, {len(previews)} previews uncovered, fits "
                     f"{SCREEN[0]}x{SCREEN[1]} at zoom {layout['scale']}\n")
