"""The board's routes in-process (FastAPI's TestClient): the schema-generated form, uploads and their preview,
data errors with file/line/field, the size limit, refused paths; and one real run (the tiny BERT, a few hundred
steps) that is stopped, resumed, interrupted by a restart of the board, listed after it and resumed again."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adaptune.board import build_board
from adaptune.board.forms import KEY_FIELDS, form
from adaptune.catalogue import method_info
from adaptune.config import load_config
from adaptune.registry import method_names, method_registration, task_names, task_registration
from board_kit import latest_checkpoint_step, run_body, wait_for, write_data


def test_the_form_is_the_config_schema() -> None:
    """Every field's type, default and help come from the pydantic models; every method a form can build and
    every task is offered, with all its scalar keys."""
    spec = form()
    for section, (model, keys) in KEY_FIELDS.items():
        fields = {field["key"]: field for field in spec["sections"][section]}
        assert list(fields) == list(keys)
        for key, field in fields.items():
            info = model.model_fields[key]
            assert field["default"] == info.default, key
            assert field["help"] == (info.description or ""), key
    buildable = [name for name in method_names() if method_info(name).config is not None]
    assert list(spec["methods"]) == buildable and "lora" in buildable
    lora = {field["key"]: field for field in spec["methods"]["lora"]["fields"]}
    lora_fields = method_registration("lora").config_cls.model_fields
    assert lora["r"]["default"] == lora_fields["r"].default and lora["r"]["type"] == "integer"
    assert lora["init"]["enum"] == ["kaiming", "gaussian"] and "roles" not in lora  # a list: not a form field
    assert list(spec["tasks"]) == task_names()
    seq = {field["key"] for field in spec["tasks"]["seq_cls"]["fields"]}
    assert seq <= set(task_registration("seq_cls").config_cls.model_fields) and "multi_label" in seq
    assert "sentence-transformers/all-MiniLM-L6-v2" in spec["packaged_models"]


def test_upload_preview_and_a_bad_file(board_dirs: tuple[Path, Path]) -> None:
    runs, data = board_dirs
    with TestClient(build_board(runs, data)) as client:
        good = (data / "train.jsonl").read_bytes()
        saved = client.post("/api/uploads", params={"name": "../../my train.jsonl"}, content=good).json()
        assert saved["path"] == str((data / "uploads" / "my_train.jsonl").resolve()) and saved["bytes"] == len(good)
        shown = client.post("/api/preview", json={"path": saved["path"], "task": {"name": "seq_cls"}}).json()
        rows = [json.loads(line) for line in good.decode().splitlines()]
        assert shown["examples"] == len(rows) and shown["rows"][0]["text"] == rows[0]["text"]
        assert {item["label"]: item["count"] for item in shown["labels"]} == Counter(r["label"] for r in rows)
        bad = b'{"text": "hello", "label": "greeting"}\n{"text": "", "label": "refund_request"}\n'
        saved = client.post("/api/uploads", params={"name": "bad.jsonl"}, content=bad).json()
        answer = client.post("/api/preview", json={"path": saved["path"], "task": {"name": "seq_cls"}})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "data_error" and error["file"] == saved["path"]
    assert (error["line"], error["field"]) == (2, "text")
    assert error["message"] == f"{saved['path']}:2: field 'text': {error['reason']}"


def test_uploads_over_the_limit_are_refused(board_dirs: tuple[Path, Path]) -> None:
    runs, data = board_dirs
    with TestClient(build_board(runs, data, max_upload_bytes=100)) as client:
        answer = client.post("/api/uploads", params={"name": "big.jsonl"}, content=b"x" * 101)
        assert client.post("/api/uploads", params={"name": "ok.jsonl"}, content=b"x" * 100).status_code == 200

        def chunks() -> Any:  # no content-length: the limit is counted as the body streams in
            yield from (b"y" * 60, b"y" * 60)

        streamed = client.post("/api/uploads", params={"name": "streamed.jsonl"}, content=chunks())
    for refused in (answer, streamed):
        assert refused.status_code == 413
        assert refused.json()["error"]["limit"] == "max_upload_bytes"
    assert sorted(path.name for path in (data / "uploads").iterdir()) == ["ok.jsonl"]


def test_paths_outside_the_board_are_refused(board_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    runs, data = board_dirs
    outside = tmp_path / "outside"
    write_data(outside)
    (data / "link.jsonl").symlink_to(outside / "train.jsonl")
    (data / "linked-model").symlink_to(data / "tiny", target_is_directory=True)
    shutil.copytree(data / "tiny", outside / "tiny")
    with TestClient(build_board(runs, data)) as client:
        for path in (str(outside / "train.jsonl"), "../outside/train.jsonl", "link.jsonl", "/etc/passwd"):
            answer = client.post("/api/preview", json={"path": path, "task": {"name": "seq_cls"}})
            assert answer.status_code == 403, path
            assert answer.json()["error"]["type"] == "path_refused" and path in answer.json()["error"]["message"]
        body = run_body("outside-model", outside / "tiny", max_steps=1)
        assert client.post("/api/runs", json=body).status_code == 403
        body = run_body("outside-data", data / "tiny", max_steps=1)
        body["data"]["dev"] = str(outside / "dev.jsonl")
        assert client.post("/api/runs", json=body).status_code == 403
        assert client.get("/api/runs").json() == []
    assert not runs.joinpath("outside-model").exists()


def test_a_bad_config_is_refused_before_anything_is_written(board_dirs: tuple[Path, Path]) -> None:
    runs, data = board_dirs
    with TestClient(build_board(runs, data)) as client:
        answer = client.post("/api/runs", json=run_body("bad", data / "tiny", epochs=0))
        missing = client.post("/api/runs", json={"name": "no-data", "data": {}})
        assert client.get("/api/runs").json() == []
    assert answer.status_code == 400 and "training.epochs" in answer.json()["error"]["message"]
    assert missing.status_code == 400 and "data.train" in missing.json()["error"]["message"]
    assert sorted(path.name for path in runs.iterdir()) == ["board.sqlite"]


def _status(client: TestClient, run_id: str) -> str:
    return str(client.get(f"/api/runs/{run_id}").json()["status"])


def _events(client: TestClient, run_id: str) -> list[tuple[str, Any]]:
    """Every event of a run's stream until its ``end``."""
    events, name = [], ""
    with client.stream("GET", f"/api/runs/{run_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> dict[str, Any]:
    """A run stopped once, resumed, interrupted by the board's shutdown, then resumed by a new board until it
    finished; what was seen on the way."""
    root = tmp_path_factory.mktemp("board-run")
    runs, data = root / "runs", root / "data"
    write_data(data)
    shutil.copytree(tiny_bert, data / "tiny")
    max_steps, seen = 200, {}
    with TestClient(build_board(runs, data)) as client:
        row = client.post("/api/runs", json=run_body("intents", data / "tiny", max_steps=max_steps, eval_every=10))
        assert row.status_code == 201, row.text
        folder = Path(row.json()["folder"])
        wait_for(lambda: latest_checkpoint_step(folder) > 0, what="a first checkpoint")
        seen["stopped"] = client.post("/api/runs/intents/stop").json()
        wait_for(lambda: _status(client, "intents") == "stopped", what="the stop")
        stopped_at = latest_checkpoint_step(folder)
        assert client.post("/api/runs/intents/resume").json()["status"] == "running"
        wait_for(lambda: latest_checkpoint_step(folder) > stopped_at, what="a checkpoint after the resume")
    seen["after_restart"] = TestClient(build_board(runs, data)).get("/api/runs").json()  # no lifespan: a plain read
    with TestClient(build_board(runs, data)) as client:
        seen["resumed"] = client.post("/api/runs/intents/resume").json()
        seen["events"] = _events(client, "intents")
        seen["report"] = client.get("/api/runs/intents/report").json()
        seen["errors"] = client.get("/api/runs/intents/errors", params={"split": "dev"}).json()
        seen["predict"] = client.post("/api/runs/intents/predict", json={"text": "where is my parcel?"}).json()
        seen["bad_input"] = client.post("/api/runs/intents/predict", json={"text": "{not json"})
        seen["zip"] = client.get("/api/runs/intents/adapter.zip").content
        seen["yaml"] = client.get("/api/runs/intents/config.yaml").text
        seen["plot"] = client.get("/api/runs/intents/files/training_curves.png")
        seen["log"] = client.get("/api/runs/intents/files/board.log").status_code
    return {"folder": folder, "max_steps": max_steps, **seen}


def test_a_run_survives_a_restart_and_resumes(finished_run: dict[str, Any]) -> None:
    assert finished_run["stopped"]["id"] == "intents"
    (listed,) = finished_run["after_restart"]
    assert listed["status"] == "interrupted" and listed["resumable"] and listed["pid"] is None
    assert finished_run["resumed"]["status"] == "running"
    events = finished_run["events"]
    assert events[-1][0] == "end" and events[-2][1]["status"] == "finished"
    resets = [index for index, (name, _data) in enumerate(events) if name == "reset"]
    events = events[resets[-1] :] if resets else events  # a resumed run rewrites its log: the page starts over
    steps = [data["step"] for name, data in events if name == "metric" and "train_loss" in data]
    assert steps == list(range(1, finished_run["max_steps"] + 1))  # the log of the resumed run, step by step
    assert all("tokens_per_s" in data for name, data in events if name == "metric" and "train_loss" in data)
    assert any("eval_accuracy" in data for name, data in events if name == "metric")


def test_the_report_errors_and_downloads(finished_run: dict[str, Any]) -> None:
    report = finished_run["report"]
    dev = report["splits"]["dev"]
    assert set(dev["report"]["per_class"]) <= {line for line in dev["report"]["confusion_matrix"]["labels"]}
    assert "training_curves.png" in report["plots"] and report["summary"]["steps"] == finished_run["max_steps"]
    errors = finished_run["errors"]
    assert errors["examples"] == 16
    assert errors["errors"] == round((1 - dev["headline"]["accuracy"]) * 16)
    scores = [row["score"] for row in errors["rows"]]
    assert scores == sorted(scores, reverse=True) and all(row["gold"] != row["predicted"] for row in errors["rows"])
    assert all(row["where"].endswith(tuple(f"dev.jsonl:{n}" for n in range(1, 17))) for row in errors["rows"])
    predicted = finished_run["predict"]
    assert predicted["kind"] == "classify" and abs(sum(predicted["prediction"]["scores"].values()) - 1) < 1e-4
    assert finished_run["bad_input"].status_code == 400 and finished_run["bad_input"].json()["error"]["line"] == 1
    names = zipfile.ZipFile(io.BytesIO(finished_run["zip"])).namelist()
    assert {"adapter/adapter_config.json", "adapter/adapter.safetensors"} <= set(names)
    config = finished_run["folder"] / "downloaded.yaml"
    config.write_text(finished_run["yaml"])
    assert load_config(config).training.max_steps == finished_run["max_steps"]
    assert finished_run["plot"].status_code == 200 and finished_run["plot"].content.startswith(b"\x89PNG")
    assert finished_run["log"] == 404  # only plots are served from a run folder


def test_unknown_runs_and_routes_answer_json(board_dirs: tuple[Path, Path]) -> None:
    runs, data = board_dirs
    with TestClient(build_board(runs, data)) as client:
        for path in ("/api/runs/nope", "/api/runs/nope/report", "/api/nothing"):
            answer = client.get(path)
            assert answer.status_code == 404 and answer.json()["error"]["message"], path
        assert client.post("/api/runs/nope/resume").status_code == 404
    assert os.path.isfile(runs / "board.sqlite")
