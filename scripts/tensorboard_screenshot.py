"""Make docs/tensorboard.png: a TensorBoard screenshot of a real, short CPU demo run (issue 13 item 5).

What it does, in order:

1. trains ``python cli.py fit --config configs/demo.yaml`` shortened through the ``rollout:`` group and
   trainer overrides (``--epochs`` rollout batches of ``--prompts`` prompts x 8 rollouts, validation every
   ``--val-every`` epochs) into a fresh temporary run folder (``--run-dir DIR`` keeps it in DIR; a run
   already there is reused, not trained again);
2. starts ``tensorboard --logdir <run>/tb --port <free port> --host 127.0.0.1`` and waits until its HTTP
   data API lists the run's scalar tags;
3. loads the scalars dashboard, filtered through the URL to nine ``val``, ``reward``, ``rollout`` and
   ``echo`` tags (``TAG_FILTER``, a regex), in headless Chromium driven over the DevTools protocol (to turn
   the dashboard's "ignore outliers" off, a localStorage setting), and writes the screenshot to ``--out``
   (default ``docs/tensorboard.png``);
4. stops TensorBoard (and removes the temporary run folder).

Needs Chromium on PATH (Debian: ``apt-get install -y chromium``) and aiohttp (installed with ``datasets``),
so it is not run in CI. From the repository root, with the venv active (the committed PNG: the defaults,
12 epochs of 16 prompts: 7 minutes end to end on 2 CPU cores shared with other jobs):

    HF_HUB_OFFLINE=1 python scripts/tensorboard_screenshot.py
    HF_HUB_OFFLINE=1 python scripts/tensorboard_screenshot.py --epochs 20 --out /tmp/tb.png

Left out: other dashboards (text, images, histograms) and any check of the picture's content; look at it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG_FILTER = (
    r"^(val/accuracy|reward/mean|rollout/(frac_all_success|frac_all_fail|response_length)"
    r"|echo/(loss|num_clips|clip_tokens|peak_step_entropy))$"
)
"""The charts shown: validation accuracy, reward, the all-success share EchoRL feeds on, the echo term."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train_demo(run_dir: Path, epochs: int, prompts: int, val_every: int) -> None:
    """The demo config, shortened, logging into ``run_dir`` (TensorBoard under ``run_dir/tb``).

    The demo's output paths (``runs/demo``: logger, checkpoints, root dir) are moved to ``run_dir`` in a copy
    of the config, not by dotted overrides: ``--trainer.callbacks.init_args.dirpath`` would land on the last
    callback of the list, whichever that is."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "demo.yaml"
    config.write_text((ROOT / "configs" / "demo.yaml").read_text().replace("runs/demo", str(run_dir)))
    command = [
        sys.executable,
        "cli.py",
        "fit",
        "--config",
        str(config),
        f"--trainer.max_epochs={epochs}",
        f"--trainer.check_val_every_n_epoch={val_every}",
        f"--rollout.prompts_per_epoch={prompts}",
        "--data.init_args.num_val=64",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    print("training:", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, env=env, check=True)


def wait_for_tags(base_url: str, timeout_s: float) -> list[str]:
    """Poll TensorBoard's scalar tag API until it lists at least one tag; return the tags."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/data/plugin/scalars/tags", timeout=5) as response:
                runs = json.load(response)
            tags = sorted({tag for run in runs.values() for tag in run})
            if tags:
                return tags
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"TensorBoard at {base_url} served no scalar tags within {timeout_s:.0f} s")


def screenshot(url: str, out: Path, wait_s: float) -> None:
    """Headless Chromium screenshot (1600 x 1200) of ``url`` into ``out``, with the scalars dashboard's
    "ignore outliers" off: that setting lives in the page's localStorage, not in the URL (with it on,
    a short run's few validation points are cut off the chart), so Chromium is driven over the DevTools
    protocol (aiohttp's websocket client): set the key, reload, wait ``wait_s``, capture."""
    import aiohttp  # a dependency of ``datasets``; imported here so --help works without it

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found: apt-get install -y chromium")
    out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    profile = tempfile.mkdtemp(prefix="echorl-chromium-")
    browser = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1600,1200",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def capture() -> bytes:
        async with aiohttp.ClientSession() as session:
            for _ in range(60):  # the DevTools endpoint comes up after a second or two
                try:
                    async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                        pages = [t for t in await response.json() if t.get("type") == "page"]
                    if pages:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(1.0)
            else:
                raise TimeoutError("Chromium's DevTools endpoint did not come up")
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 1_000_000))

                async def call(method: str, **params: object) -> dict:
                    message_id = next(ids)
                    await ws.send_json({"id": message_id, "method": method, "params": params})
                    while True:
                        reply = await ws.receive_json()
                        if reply.get("id") == message_id:
                            return reply.get("result", {})

                await asyncio.sleep(3.0)
                expression = "localStorage.setItem('_ignoreYOutliers', 'false'); location.reload()"
                await call("Runtime.evaluate", expression=expression)
                await asyncio.sleep(wait_s)  # charts load and draw
                shot = await call("Page.captureScreenshot", format="png")
                return base64.b64decode(shot["data"])

    try:
        out.write_bytes(asyncio.run(capture()))
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="rollout batches to train")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per rollout batch")
    parser.add_argument("--val-every", type=int, default=4, help="validate every this many epochs")
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the run here; reused if present")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tensorboard.png")
    parser.add_argument("--wait-s", type=float, default=15.0, help="seconds the page gets to draw")
    args = parser.parse_args()

    temp = None if args.run_dir is not None else tempfile.mkdtemp(prefix="echorl-tb-")
    run_dir = args.run_dir if args.run_dir is not None else Path(temp)  # type: ignore[arg-type]
    try:
        if not (run_dir / "tb").exists():
            train_demo(run_dir.resolve(), args.epochs, args.prompts, args.val_every)
        port = free_port()
        board = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(run_dir / "tb"),
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            tags = wait_for_tags(base_url, timeout_s=120)
            print(f"TensorBoard serves {len(tags)} scalar tags", flush=True)
            query = urllib.parse.urlencode({"tagFilter": TAG_FILTER, "_smoothingWeight": "0"})
            url = f"{base_url}/#scalars&{query}"
            screenshot(url, args.out, args.wait_s)
            print(f"wrote {args.out} from {url}", flush=True)
        finally:
            board.terminate()
            board.wait(timeout=30)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
