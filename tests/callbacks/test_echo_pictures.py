"""EchoClip pictures: the clip view and its Markdown/figure on hand-made rollouts (hand-computed step means,
peak, clip end), the four TensorBoard records read back from the event file, and a real training run served
by a real ``tensorboard`` process, checked through its HTTP data API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from echorl_lightning.callbacks.echo_pictures import TAGS, EchoPictures, log_echo_pictures, logs_at
from echorl_lightning.callbacks.rollout import RolloutCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugin_util import markdown_to_safe_html
from torch.utils.tensorboard import SummaryWriter

from echorl_lightning.echo import (
    delimiter_token_ids,
    echo_metrics,
    select_echo_clips,
    step_end_mask_from_tokens,
)
from echorl_lightning.echo.clip_view import clip_view, degenerate_clip_rows
from echorl_lightning.echo.render import (
    clip_markdown,
    escape_markdown,
    step_entropy_curve,
    step_entropy_figure,
)
from echorl_lightning.rollout.batch import RolloutBatch, pad_rollouts

# Byte-level tokenizer: id == byte, EOS = 256, pad = 257. Two groups of G' = 2 rows, T = 6:
#   row 0 "7\n" "*\n" "<" EOS   entropy [1, 3, 2, 8, 0.5, 9] -> steps (1+3)/2 = 2.0, (2+8)/2 = 5.0, 0.5  (K = 3)
#   row 1 "\n" "a|" EOS          entropy [4, 1, 1, .]          -> steps 4.0, (1+1)/2 = 1.0               (K = 2)
#   row 2 "ok" EOS               entropy [2, 2, .]             -> one step 2.0                           (K = 1)
#   row 3 "no" EOS (score 0)     entropy [3, 3, .]             -> one step 3.0                           (K = 1)
# apply_to="success": group 0 (scores 1, 1) pools 2, 5, 0.5, 4, 1 -> peak = row 0 step 1 -> clip row 0 t 0..3;
# group 1 (scores 1, 0) has V = {row 2} -> clip row 2 t 0..1 (its only step). Group 1 is not degenerate.
RESPONSES = [[55, 10, 42, 10, 60, 256], [10, 97, 124, 256], [111, 107, 256], [110, 111, 256]]
PROMPTS = [[81, 58, 32, 49], [81, 58, 32, 49], [81, 58, 32, 50], [81, 58, 32, 50]]  # "Q: 1", "Q: 2"
SCORES = torch.tensor([1.0, 1.0, 1.0, 0.0])
NAN = float("nan")  # off the step mask: must be ignored
ENTROPY = torch.tensor(
    [
        [1.0, 3.0, 2.0, 8.0, 0.5, 9.0],
        [4.0, 1.0, 1.0, 7.0, NAN, NAN],
        [2.0, 2.0, 9.0, NAN, NAN, NAN],
        [3.0, 3.0, 9.0, NAN, NAN, NAN],
    ]
)


def record(tokenizer) -> RolloutBatch:
    tokens = pad_rollouts(PROMPTS, RESPONSES, pad_id=257)
    step_mask = tokens.response_mask * (tokens.responses != 256).float()  # [4, 6], EOS excluded
    step_end = step_end_mask_from_tokens(tokens.responses, delimiter_token_ids(tokenizer))
    clip = select_echo_clips(ENTROPY, step_mask, step_end, SCORES, 2, apply_to="success")
    return RolloutBatch(
        **{name: getattr(tokens, name) for name in tokens.__dataclass_fields__},
        temperature=1.0,
        max_response_len=6,
        group_size=2,
        scores=SCORES,
        entropy=ENTROPY,
        step_mask=step_mask,
        step_end=step_end,
        clip_mask=clip,
        off_policy=torch.zeros(4).bool(),
    )


def decoder(tokenizer):
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


def test_clip_view_hand_computed(tiny_tokenizer) -> None:
    rec = record(tiny_tokenizer)
    expected_clip = torch.tensor(
        [[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    ).bool()
    assert torch.equal(rec.clip_mask, expected_clip)
    view = clip_view(rec.entropy, rec.step_mask, rec.step_end, rec.clip_mask)
    torch.testing.assert_close(
        view.steps.entropy[:, :3],
        torch.tensor([[2.0, 5.0, 0.5], [4.0, 1.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0]]),
        rtol=0,
        atol=1e-6,
    )
    assert view.steps.num_steps.tolist() == [3, 2, 1, 1]
    # step spans: row 0 steps t 0-1, 2-3, 4; row 1 t 0, 1-2; rows 2, 3 t 0-1; absent steps start T=6, stop 0
    assert view.start.tolist() == [
        [0, 2, 4, 6, 6, 6],
        [0, 1, 6, 6, 6, 6],
        [0, 6, 6, 6, 6, 6],
        [0, 6, 6, 6, 6, 6],
    ]
    assert view.stop.tolist() == [
        [2, 4, 5, 0, 0, 0],
        [1, 3, 0, 0, 0, 0],
        [2, 0, 0, 0, 0, 0],
        [2, 0, 0, 0, 0, 0],
    ]
    assert view.response_len.tolist() == [5, 3, 2, 2]
    assert view.clip_end.tolist() == [3, -1, 1, -1]
    assert view.peak_step.tolist() == [1, -1, 0, -1]
    assert view.has_clip.tolist() == [True, False, True, False]
    # row 0: step 1 of K = 3 -> 1 / 2 = 0.5; row 2: one step -> 0
    torch.testing.assert_close(view.peak_pos, torch.tensor([0.5, 0.0, 0.0, 0.0]), rtol=0, atol=0)
    # the mean over clip rows is the logged scalar: (0.5 + 0) / 2 = 0.25
    stats = echo_metrics(rec.entropy, rec.step_mask, rec.step_end, rec.clip_mask)
    torch.testing.assert_close(view.peak_pos[view.has_clip].mean(), stats["echo/peak_step_pos"])
    assert stats["echo/peak_step_pos"].item() == 0.25


def test_clip_view_without_clips_and_empty_responses() -> None:
    view = clip_view(torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2, 3).bool(), torch.zeros(2, 3).bool())
    assert view.clip_end.tolist() == [-1, -1] and view.peak_step.tolist() == [-1, -1]
    assert view.peak_pos.tolist() == [0.0, 0.0] and view.start.tolist() == [[0, 3, 3], [0, 3, 3]]
    empty = clip_view(
        torch.zeros(2, 0), torch.zeros(2, 0), torch.zeros(2, 0).bool(), torch.zeros(2, 0).bool()
    )
    assert empty.clip_end.tolist() == [-1, -1] and empty.response_len.tolist() == [0, 0]
    with pytest.raises(ValueError, match="clip_mask has shape"):
        clip_view(torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2, 3).bool(), torch.zeros(2, 4).bool())


def test_degenerate_clip_rows() -> None:
    # groups of 2: g0 (1, 1) clip row 1; g1 (1, 0) clip row 2, not degenerate; g2 (0, 0) degenerate, no clip;
    # g3 (1, 1) clip row 7; g4 (1, 1) clip row 8
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    clip = torch.zeros(10, 3, dtype=torch.bool)
    clip[[1, 2, 7, 8], 0] = True
    assert degenerate_clip_rows(scores, clip, 2, 3).tolist() == [1, 7, 8]
    assert degenerate_clip_rows(scores, clip, 2, 2).tolist() == [1, 7]
    assert degenerate_clip_rows(scores, clip, 2, 0).tolist() == []
    with pytest.raises(ValueError, match="divide"):
        degenerate_clip_rows(scores, clip, 3, 1)


def test_escape_markdown_renders_literally() -> None:
    text = "a*b_c|d <think> & x\\y\n`z` #1 [l](u) -2.5+~3!"
    html = markdown_to_safe_html(f"| t |\n|---|\n| {escape_markdown(text)} |")
    # TensorBoard's own renderer shows every character as text: no emphasis, no extra cell, no tag
    assert "<td>a*b_c|d &lt;think&gt; &amp; x\\y↵`z` #1 [l](u) -2.5+~3!</td>" in html
    assert "<em>" not in html and "<code>" not in html and "<a" not in html


def test_clip_markdown_content(tiny_tokenizer) -> None:
    rec = record(tiny_tokenizer)
    view = clip_view(rec.entropy, rec.step_mask, rec.step_end, rec.clip_mask)
    text = clip_markdown(view, rec.responses, rec.clip_mask, [0, 1], decoder(tiny_tokenizer), ["A", "B"])
    lines = text.splitlines()
    assert lines[0] == "#### A"
    # clip = steps 0-1 of 3, tokens 0..3 = 4 of 5 step tokens; peak step 1 at entropy 5.000, position 1 / 2
    assert lines[2] == (
        "EchoClip (bold): steps 0–1 of 3, 4 of 5 tokens; peak step 1, mean entropy 5.000, relative position 0.50"
    )
    assert lines[4:9] == [
        "| step | mean entropy | text |",
        "|---:|---:|---|",
        "| 0 | 2.000 | **7↵** |",
        "| **1 ★ peak** | **5.000** | **\\*↵** |",
        "| 2 | 0.500 | &lt; |",
    ]
    # row 1 has no clip: nothing bold, no peak (so 4 bold spans in all: 2 clip steps, the peak label and entropy)
    assert "no EchoClip in this rollout (2 steps)" in text
    assert lines[-2:] == ["| 0 | 4.000 | ↵ |", "| 1 | 1.000 | a\\| |"]
    html = markdown_to_safe_html(text)
    assert html.count("<strong>") == 4 and "<strong>*↵</strong>" in html and "<strong>7↵</strong>" in html
    assert html.count("<tr>") == 2 + 3 + 2  # one header row per table + 3 + 2 steps


def test_clip_markdown_cuts_long_steps(tiny_tokenizer) -> None:
    # one row, one step "abcdef" (no newline), clip = the first 2 tokens; 4 characters shown: "ab" bold,
    # then "c" and the ellipsis (4 - 1 = 3 characters of text + "…")
    responses = torch.tensor([[97, 98, 99, 100, 101, 102]])
    clip = torch.tensor([[1, 1, 0, 0, 0, 0]]).bool()
    view = clip_view(torch.ones(1, 6), torch.ones(1, 6), torch.zeros(1, 6).bool(), clip)
    text = clip_markdown(view, responses, clip, [0], decoder(tiny_tokenizer), ["t"], max_step_chars=4)
    assert text.splitlines()[-1] == "| **0 ★ peak** | **1.000** | **ab**c… |"
    text = clip_markdown(view, responses, clip, [0], decoder(tiny_tokenizer), ["t"], max_step_chars=2)
    assert text.splitlines()[-1] == "| **0 ★ peak** | **1.000** | **a…** |"


def test_step_entropy_curve_and_figure(tiny_tokenizer) -> None:
    rec = record(tiny_tokenizer)
    view = clip_view(rec.entropy, rec.step_mask, rec.step_end, rec.clip_mask)
    xs, ys, peak_xy, clip_x = step_entropy_curve(view, 0)
    # L = 5 step tokens: spans [0, 2), [2, 4), [4, 5) -> 0-0.4, 0.4-0.8, 0.8-1.0
    assert xs == pytest.approx([0.0, 0.4, 0.4, 0.8, 0.8, 1.0], abs=1e-12)
    assert ys == [2.0, 2.0, 5.0, 5.0, 0.5, 0.5]
    assert peak_xy == pytest.approx((0.6, 5.0), abs=1e-12)  # middle of [2, 4) / 5 = 3 / 5
    assert clip_x == pytest.approx(0.8, abs=1e-12)  # (clip_end 3 + 1) / 5
    assert step_entropy_curve(view, 1)[2:] == (None, None)
    image = step_entropy_figure(view, [0, 2], ["row 0", "row 2"], "t")
    assert image.shape == (320, 640, 3) and image.dtype == np.uint8
    assert (image < 200).any(axis=-1).mean() > 0.01  # something is drawn on the white canvas


def test_log_echo_pictures_writes_the_four_records(tiny_tokenizer, tmp_path: Path) -> None:
    rec = record(tiny_tokenizer)
    writer = SummaryWriter(str(tmp_path))
    rows = log_echo_pictures(writer, rec, 7, decoder(tiny_tokenizer), step=11)
    writer.close()
    assert rows == [0]  # group 1 holds a clip but is not degenerate
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0, "images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["tensors"] + tags["images"] + tags["histograms"]) == set(TAGS)
    (text_event,) = acc.Tensors("echo/clips")
    text = text_event.tensor_proto.string_val[0].decode()
    assert text_event.step == 11
    assert text.startswith("#### epoch 7 · group 0 · rollout 0 of 2 · score 1 · prompt: Q: 1")
    assert "| **1 ★ peak** | **5.000** | **\\*↵** |" in text
    (image,) = acc.Images("echo/step_entropy")
    assert (image.width, image.height, image.step) == (640, 320, 11)
    token_hist = acc.Histograms("entropy/token_hist")[0].histogram_value
    # step tokens 5 + 3 + 2 + 2 = 12; sum (1+3+2+8+0.5) + (4+1+1) + (2+2) + (3+3) = 30.5
    assert (token_hist.num, token_hist.sum, token_hist.min, token_hist.max) == (12, 30.5, 0.5, 8.0)
    peak_hist = acc.Histograms("echo/peak_step_pos_hist")[0].histogram_value
    assert (peak_hist.num, peak_hist.sum) == (2, 0.5)  # clip rows 0 and 2: positions 0.5 and 0


def test_log_echo_pictures_without_degenerate_clips(tiny_tokenizer, tmp_path: Path) -> None:
    rec = record(tiny_tokenizer)
    rec.clip_mask = torch.zeros_like(rec.clip_mask)
    writer = SummaryWriter(str(tmp_path))
    assert log_echo_pictures(writer, rec, 7, decoder(tiny_tokenizer), step=0) == []
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("echo/clips")
    assert "no advantage-degenerated group" in event.tensor_proto.string_val[0].decode()
    assert acc.Tags()["images"] == [] and acc.Tags()["histograms"] == ["entropy/token_hist"]


def test_setup_needs_a_rollout_callback_and_warns_without_tensorboard(tmp_path: Path) -> None:
    from echorl_lightning.module import EchoRLModule
    from echorl_lightning.tiny import TINY_MODEL_PATH

    module = EchoRLModule(model=TINY_MODEL_PATH)
    pictures = EchoPictures()
    trainer = L.Trainer(logger=CSVLogger(str(tmp_path)), callbacks=[pictures], enable_progress_bar=False)
    with pytest.raises(ValueError, match="add echorl_lightning.callbacks.rollout.RolloutCallback"):
        pictures.setup(trainer, module, "fit")
    trainer = L.Trainer(
        logger=CSVLogger(str(tmp_path)), callbacks=[RolloutCallback(), pictures], enable_progress_bar=False
    )
    with pytest.warns(UserWarning, match="no TensorBoardLogger"):
        pictures.setup(trainer, module, "fit")
    assert pictures._logger is None
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        EchoPictures(every_n_epochs=0)


def test_logs_at_every_n_epochs_and_the_first_epoch_of_a_fit() -> None:
    # a fresh fit, N = 5: epochs 0, 5, 10
    assert [e for e in range(12) if logs_at(e, 0, 5)] == [0, 5, 10]
    # resumed at epoch 7: 7 (first of this fit), then 10
    assert [e for e in range(7, 12) if logs_at(e, 7, 5)] == [7, 10]
    assert [e for e in range(4) if logs_at(e, 0, 1)] == [0, 1, 2, 3]


# ---- the real thing: a training run, served by tensorboard ------------------------------------------------


class AcceptAll:
    """Every completion succeeds: every group is all-success (advantage-degenerated) and holds a clip."""

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        return [1.0] * len(completions)


def train(tmp_path: Path, pictures: EchoPictures | None) -> dict[str, torch.Tensor]:
    from echorl_lightning.module import EchoRLModule
    from echorl_lightning.tasks import ProceduralDataModule
    from echorl_lightning.tasks.arithmetic import ArithmeticTask
    from echorl_lightning.tiny import TINY_MODEL_PATH

    L.seed_everything(0)
    module = EchoRLModule(model=TINY_MODEL_PATH, lr=1e-4)
    data = ProceduralDataModule(ArithmeticTask(), num_train=64, num_val=0, verifier=AcceptAll())
    data.connect(module.tokenizer)
    rollout = RolloutCallback(prompts_per_epoch=4, group_size=4, max_new_tokens=48, seed=0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        callbacks=[rollout] + ([pictures] if pictures else []),
        logger=TensorBoardLogger(str(tmp_path), name="tb", version=0),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    return {k: v.detach().clone() for k, v in module.policy.state_dict().items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(base: str, path: str, **query: str) -> object:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_pictures_of_a_real_run_are_served_by_tensorboard(tmp_path: Path) -> None:
    with_pictures = train(tmp_path / "on", EchoPictures(every_n_epochs=2, max_groups=2))
    without = train(tmp_path / "off", None)
    # the callback only reads: same weights after 3 updates
    assert with_pictures.keys() == without.keys()
    assert all(torch.equal(with_pictures[k], without[k]) for k in without)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tb_bin = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen(
        [
            str(tb_bin),
            "--logdir",
            str(tmp_path / "on" / "tb"),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--load_fast",
            "false",
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline, text_tags = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                text_tags = get_json(base, "/data/plugin/text/tags")
                if text_tags.get("version_0"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert text_tags == {"version_0": ["echo/clips"]}

        scalars = get_json(base, "/data/plugin/scalars/tags")["version_0"]
        for tag in ("echo/num_clips", "echo/peak_step_pos", "echo/clip_frac", "rollout/frac_all_success"):
            assert tag in scalars, sorted(scalars)
        # 4 prompts x 4 rollouts, all accepted: every group degenerate, one clip each
        clips = get_json(base, "/data/plugin/scalars/scalars", run="version_0", tag="echo/num_clips")
        assert [row[2] for row in clips] == [4.0, 4.0, 4.0]

        # logged at epoch 0 and 2 (every_n_epochs=2), one optimizer step per epoch -> global steps 1 and 3
        texts = get_json(base, "/data/plugin/text/text", run="version_0", tag="echo/clips")
        assert [t["step"] for t in texts] == [1, 3]
        html = texts[0]["text"]
        assert html.count("<h4>") == 2 and "★ peak" in html and "<strong>" in html and "<table>" in html

        images = get_json(base, "/data/plugin/images/tags")["version_0"]
        assert list(images) == ["echo/step_entropy"]
        entries = get_json(base, "/data/plugin/images/images", run="version_0", tag="echo/step_entropy")
        assert [e["step"] for e in entries] == [1, 3]
        with urllib.request.urlopen(f"{base}/data/plugin/images/individualImage?{entries[-1]['query']}") as r:
            assert r.read(8) == b"\x89PNG\r\n\x1a\n"

        hists = get_json(base, "/data/plugin/histograms/tags")["version_0"]
        assert {"entropy/token_hist", "echo/peak_step_pos_hist"} <= set(hists)
        peak = get_json(
            base, "/data/plugin/histograms/histograms", run="version_0", tag="echo/peak_step_pos_hist"
        )
        assert [p[1] for p in peak] == [1, 3]
        assert sum(bucket[2] for bucket in peak[0][2]) == pytest.approx(4.0)  # one position per clip
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
