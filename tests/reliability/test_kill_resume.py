"""Crash safety: SIGKILL a training child at 20 random points, resume each time, and end with the exact weights.

The harness lives in ``benchmarks/faults.py`` (which makes 100 kills for ``benchmarks/results/faults.json``); its
docstring describes the kill points. A corrupt or truncated checkpoint is refused with a :class:`CheckpointError`
that names the file, and no adapter is written from it.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adaptune import load_config, train
from adaptune.cli import app
from adaptune.config import RunConfig
from adaptune.training.checkpoint import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import faults

CHECKPOINT_FILES = ("state.safetensors", "state.json", "latest.json")


@pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="the harness forks children from a fork server"
)
def test_sigkill_at_20_random_points_resumes_exactly(tiny_bert: Path, tmp_path: Path) -> None:
    report = faults.run_faults(tiny_bert, tmp_path, kills=20, seed=2024)
    details = "\n".join(report.problems + report.segments)
    assert report.as_json() == {"kills": 20, "exact_resumes": 20, "corrupt_loads": 0}, details
    assert set(report.kinds) == {"time", "write", "stall"}, details
    assert any(name in report.landed for name in CHECKPOINT_FILES), f"no kill during a checkpoint write\n{details}"
    assert report.runs >= 3, "several runs, each killed and resumed more than once on average"
    assert report.steps_not_redone > 0, "resumes continued from checkpoints, they did not start again"


# --- corrupt checkpoints ---------------------------------------------------------------------------------


def _config(model: Path, data: Path, out: Path) -> RunConfig:
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "method.name=bottleneck",
            "method.reduction_factor=4",
            f"data.train={data / 'train.jsonl'}",
            f"data.dev={data / 'dev.jsonl'}",
            "data.max_train_examples=64",
            "data.max_eval_examples=8",
            "data.batch_size=8",
            "training.max_steps=3",
            "training.eval_every=1",
            "training.progress=false",
            f"training.output_dir={out}",
        ],
    )


@pytest.fixture(scope="module")
def checkpointed(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoints folder of a finished 3-step run."""
    out = tmp_path_factory.mktemp("checkpointed")
    train(_config(tiny_bert, bundled_data / "intents", out))
    return out / "checkpoints"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "tensors truncated": ("state.safetensors", _truncate, "is corrupt or truncated"),
    "tensors bit flip": ("state.safetensors", _flip_last_byte, "is corrupt or truncated"),
    "state.json truncated": ("state.json", _truncate, "is corrupt or truncated"),
    "state.json missing": ("state.json", Path.unlink, "cannot be read"),
    "latest.json garbage": ("../latest.json", lambda p: p.write_text("[]"), "is corrupt"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_is_refused_naming_the_file(
    case: str, checkpointed: Path, tiny_bert: Path, bundled_data: Path, tmp_path: Path
) -> None:
    relative, damage, words = DAMAGE[case]
    shutil.copytree(checkpointed, tmp_path / "checkpoints")
    (step,) = (tmp_path / "checkpoints").glob("step-*")
    damaged = (step / relative).resolve()
    damage(damaged)
    with pytest.raises(CheckpointError) as err:
        train(_config(tiny_bert, bundled_data / "intents", tmp_path), resume=True)
    assert str(damaged) in str(err.value) and words in str(err.value)
    assert not (tmp_path / "adapter").exists(), "nothing is trained or saved from a damaged checkpoint"


def test_damaged_checkpoint_through_the_cli(
    checkpointed: Path, tiny_bert: Path, bundled_data: Path, tmp_path: Path
) -> None:
    shutil.copytree(checkpointed, tmp_path / "run" / "checkpoints")
    (step,) = (tmp_path / "run" / "checkpoints").glob("step-*")
    _truncate(step / "state.safetensors")
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(_config(tiny_bert, bundled_data / "intents", tmp_path / "run").model_dump(mode="json"))
    )
    result = CliRunner().invoke(app, ["train", str(config), "--resume"])
    assert result.exit_code == 2, result.output
    assert str(step / "state.safetensors") in result.output.replace("\n", "")
    assert "Traceback" not in result.output
