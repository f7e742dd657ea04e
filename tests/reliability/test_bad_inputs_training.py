"""Bad inputs around a training run's output folder, its checkpoints and the base weights (the second fault tour).

=====================================  ==========================================================================
bad input                              tests
=====================================  ==========================================================================
training data changed before resume    test_resume_refuses_changed_training_data, test_resume_refuses_changed_dev_data
two runs into one output folder        test_second_run_into_a_locked_folder_is_refused
lock left by a killed run              test_stale_lock_of_a_killed_run_is_taken_over
fresh run over a finished run          test_fresh_run_over_a_finished_run_is_refused_unless_overwrite,
                                       test_cli_train_overwrite
fresh run over an unfinished run       test_fresh_run_over_checkpoints_is_refused
temporary files left by a kill         test_temp_files_are_removed_on_resume_and_on_start
output_dir that is a file              test_output_dir_that_is_a_file, test_output_dir_under_a_file
disk full while writing                test_disk_full_is_one_line_naming_the_path
read-only output folder                test_read_only_folder_is_one_line_naming_the_path
base with other weights anywhere       test_base_with_one_other_embedding_row_is_refused,
                                       test_adapter_with_an_older_sampled_fingerprint_still_loads
=====================================  ==========================================================================
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from adaptune import Predictor, load_config, train
from adaptune.backbone import load_backbone, sampled_fingerprint
from adaptune.cli import app
from adaptune.config import ModelConfig, RunConfig
from adaptune.errors import AdapterFileError, OutputError
from adaptune.io import CONFIG_FILE
from adaptune.training.callbacks import Callback
from adaptune.training.checkpoint import CheckpointError
from adaptune.training.run_folder import LOCK_NAME, OutputFolderError

runner = CliRunner()

ROWS = [
    ("where is my parcel", "order"),
    ("I want my money back", "refund"),
    ("has my order shipped", "order"),
    ("refund me please", "refund"),
    ("when does my package arrive", "order"),
    ("give me my money", "refund"),
]


def rows_file(path: Path, rows: list[tuple[str, str]] = ROWS) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows), encoding="utf-8")
    return path


def run_config(model: Path, folder: Path, *overrides: str, steps: int = 4) -> RunConfig:
    train_file = folder / "train.jsonl"
    dev_file = folder / "dev.jsonl"
    if not train_file.exists():
        rows_file(train_file)
        rows_file(dev_file, ROWS[:4])
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "method.name=bottleneck",
            "method.reduction_factor=4",
            f"data.train={train_file}",
            f"data.dev={dev_file}",
            "data.batch_size=2",
            f"training.max_steps={steps}",
            "training.eval_every=1",
            "training.progress=false",
            f"training.output_dir={folder / 'run'}",
            *overrides,
        ],
    )


class KillAfterCheckpoint(Callback):
    """Stops the run like a kill after its first checkpoint (the lock is released as a dead process's is)."""

    def on_checkpoint(self, trainer: object) -> None:
        raise KeyboardInterrupt


def interrupted_run(cfg: RunConfig) -> Path:
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[KillAfterCheckpoint()])
    out = Path(cfg.training.output_dir)
    assert (out / "checkpoints" / "latest.json").is_file() and not (out / "results.json").exists()
    return out


# --- resume ------------------------------------------------------------------------------------------------


def test_resume_refuses_changed_training_data(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = run_config(tiny_bert, tmp_path)
    interrupted_run(cfg)
    rows_file(tmp_path / "train.jsonl", [*ROWS[:-1], ("give me back my money", "refund")])  # one row edited
    with pytest.raises(CheckpointError) as info:
        train(cfg, resume=True)
    message = str(info.value)
    assert f"data.train {tmp_path / 'train.jsonl'} changed since checkpoint" in message
    assert "6 examples then, 6 now" in message and "--overwrite" in message
    rows_file(tmp_path / "train.jsonl")  # the data the run started with: it resumes and finishes
    assert train(cfg, resume=True).results["steps"] == 4


def test_resume_refuses_changed_dev_data(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = run_config(tiny_bert, tmp_path)
    interrupted_run(cfg)
    rows_file(tmp_path / "dev.jsonl", ROWS[:3])
    with pytest.raises(CheckpointError, match=r"data\.dev .*dev\.jsonl changed since checkpoint .*4 examples then, 3"):
        train(cfg, resume=True)


# --- one run per output folder -----------------------------------------------------------------------------

HOLDER = """
import sys, time
from adaptune.training.run_folder import claim_output_folder
with claim_output_folder(sys.argv[1], resume=False, overwrite=False):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_second_run_into_a_locked_folder_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = run_config(tiny_bert, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, cfg.training.output_dir], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(OutputFolderError) as info:
            train(cfg)
        message = str(info.value)
        assert f"output folder {cfg.training.output_dir} is in use by another run (PID {holder.pid}" in message
        assert LOCK_NAME in message
        assert not (Path(cfg.training.output_dir) / "metrics.jsonl").exists()  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    assert train(cfg).results["steps"] == 4  # the holder is gone: its lock went with it


def test_stale_lock_of_a_killed_run_is_taken_over(
    tiny_bert: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cfg = run_config(tiny_bert, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = Path(cfg.training.output_dir)
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "h", "started": "then"}), encoding="utf-8")
    assert train(cfg).results["steps"] == 4
    assert f"took over the lock of an earlier run that is no longer running (PID {dead.pid}" in capfd.readouterr().err
    assert not (out / LOCK_NAME).exists()  # released at the end of the run


def test_fresh_run_over_a_finished_run_is_refused_unless_overwrite(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = run_config(tiny_bert, tmp_path)
    first = train(cfg)
    adapter_bytes = (first.adapter_dir / "adapter.safetensors").read_bytes()
    with pytest.raises(OutputFolderError) as info:
        train(cfg)
    assert f"output folder {first.output_dir} holds a finished run" in str(info.value)
    assert "--overwrite" in str(info.value)
    assert (first.adapter_dir / "adapter.safetensors").read_bytes() == adapter_bytes  # untouched
    again = train(cfg, overwrite=True)
    records = [json.loads(x) for x in (again.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 4 and len({r["step"] for r in records if "loss" in r}) == len(
        [r for r in records if "loss" in r]
    )  # one run's log, not two interleaved


def test_fresh_run_over_checkpoints_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = run_config(tiny_bert, tmp_path)
    out = interrupted_run(cfg)
    latest = (out / "checkpoints" / "latest.json").read_text()
    with pytest.raises(OutputFolderError, match="checkpoints of an unfinished run .*--resume.*--overwrite"):
        train(cfg)
    assert (out / "checkpoints" / "latest.json").read_text() == latest  # the checkpoint is kept


def test_cli_train_overwrite(tiny_bert: Path, tmp_path: Path) -> None:
    args = ["train", str(_yaml(run_config(tiny_bert, tmp_path), tmp_path))]
    assert runner.invoke(app, args).exit_code == 0
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "holds a finished run" in refused.output.replace("\n", "")
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_temp_files_are_removed_on_resume_and_on_start(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = run_config(tiny_bert, tmp_path)
    out = interrupted_run(cfg)
    (out / "adapter").mkdir(exist_ok=True)
    stale = [out / "adapter" / ".adapter_config.json.k2j3.tmp", out / ".results.json.x9z.tmp"]
    stale.append(next((out / "checkpoints").glob("step-*")) / ".state.json.q1.tmp")
    for path in stale:
        path.write_text("{half", encoding="utf-8")
    result = train(cfg, resume=True)
    assert not [p for p in stale if p.exists()]
    assert not list(result.adapter_dir.glob(".*.tmp")) and not list(result.output_dir.glob(".*.tmp"))
    later = result.output_dir / ".metrics.jsonl.a1.tmp"
    later.write_text("x", encoding="utf-8")
    train(cfg, overwrite=True)
    assert not later.exists()


# --- OS errors ---------------------------------------------------------------------------------------------


def test_output_dir_that_is_a_file(tiny_bert: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder", encoding="utf-8")
    cfg = run_config(tiny_bert, tmp_path, f"training.output_dir={taken}")
    with pytest.raises(OutputFolderError, match=f"training.output_dir {taken} is a file, not a folder"):
        train(cfg)


def test_output_dir_under_a_file(tiny_bert: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    cfg = run_config(tiny_bert, tmp_path, f"training.output_dir={tmp_path / 'file' / 'run'}")
    with pytest.raises(OutputFolderError, match=f"cannot create the output folder {tmp_path / 'file' / 'run'}: "):
        train(cfg)


def _failing_fsync(code: int):
    real = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if ".adapter.safetensors." in target:
            raise OSError(code, os.strerror(code))
        real(fd)

    return fsync


def test_disk_full_is_one_line_naming_the_path(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = run_config(tiny_bert, tmp_path)
    monkeypatch.setattr(os, "fsync", _failing_fsync(errno.ENOSPC))  # the disk fills as the adapter is written
    with pytest.raises(OutputError) as info:
        train(cfg)
    adapter = Path(cfg.training.output_dir) / "adapter"
    assert str(info.value) == (
        f"cannot write {adapter / 'adapter.safetensors'}: No space left on device: free some space or choose "
        "another output folder"
    )
    assert not list(adapter.glob(".*.tmp"))  # no half-written file left behind
    assert not (Path(cfg.training.output_dir) / LOCK_NAME).exists()  # the lock is released


def test_read_only_folder_is_one_line_naming_the_path(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = run_config(tiny_bert, tmp_path)
    out = Path(cfg.training.output_dir)
    out.mkdir()
    real_open = os.open

    def read_only(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        if Path(path).parent == out and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)  # root ignores permission bits: a read-only mount, simulated
    result = runner.invoke(app, ["train", str(_yaml(cfg, tmp_path))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.replace("\n", "").startswith(
        f"error: cannot write in the output folder {out}: Read-only file system: choose a writable output folder"
    )


def _yaml(cfg: RunConfig, folder: Path) -> Path:
    import yaml

    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
    return path


# --- base fingerprint --------------------------------------------------------------------------------------


def _copy_base(base: Path, target: Path, edit_row: int | None) -> Path:
    import shutil

    shutil.copytree(base, target)
    if edit_row is not None:
        weights = target / "model.safetensors"
        tensors = load_file(weights)
        name = next(k for k in tensors if k.endswith("word_embeddings.weight"))
        tensors[name][edit_row] += 0.5
        save_file(tensors, weights, metadata={"format": "pt"})
    return target


def test_base_with_one_other_embedding_row_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    adapter = train(run_config(tiny_bert, tmp_path)).adapter_dir
    original = load_backbone(ModelConfig(name_or_path=str(tiny_bert))).model
    rows = original.get_input_embeddings().weight.shape[0]
    step = max(1, original.get_input_embeddings().weight.numel() // 4096)
    width = original.get_input_embeddings().weight.shape[1]
    row = next(r for r in range(rows) if all((r * width + c) % step for c in range(width)))  # none sampled
    other = _copy_base(tiny_bert, tmp_path / "other_base", edit_row=row)
    edited = load_backbone(ModelConfig(name_or_path=str(other))).model
    assert sampled_fingerprint(edited) == sampled_fingerprint(original)  # what the sampled hash let through
    with pytest.raises(AdapterFileError, match="different weights"):
        Predictor.load(adapter, base=str(other))


def test_adapter_with_an_older_sampled_fingerprint_still_loads(tiny_bert: Path, tmp_path: Path) -> None:
    adapter = train(run_config(tiny_bert, tmp_path)).adapter_dir
    desc = json.loads((adapter / CONFIG_FILE).read_text(encoding="utf-8"))
    base = load_backbone(ModelConfig(name_or_path=str(tiny_bert))).model
    assert desc["base_model"]["fingerprint"].startswith("sha256:")
    desc["base_model"]["fingerprint"] = sampled_fingerprint(base)  # as adapters saved before recorded it
    (adapter / CONFIG_FILE).write_text(json.dumps(desc), encoding="utf-8")
    assert Predictor.load(adapter).predict(["where is my parcel"])[0]["label"] in ("order", "refund")
    desc["base_model"]["fingerprint"] = "0" * 32
    (adapter / CONFIG_FILE).write_text(json.dumps(desc), encoding="utf-8")
    with pytest.raises(AdapterFileError, match="different weights"):
        Predictor.load(adapter)


def test_full_fingerprint_changes_with_any_value(tiny_bert: Path) -> None:
    model = load_backbone(ModelConfig(name_or_path=str(tiny_bert))).model
    from adaptune.backbone import fingerprint

    before = fingerprint(model)
    with torch.no_grad():
        model.get_input_embeddings().weight[7, 3] += 1e-3
    assert fingerprint(model) != before and before.startswith("sha256:")
