"""``adaptune combine``: each merge against a reference written here, and whole adapters on a tiny BERT.

The tensor tests compare :mod:`adaptune.combine`'s functions with independent computations on small tensors (loops
over entries, peft's TIES where peft is installed, the singular values for the SVD bound). The end-to-end tests
train tiny LoRA/DoRA adapters with :func:`adaptune.train`, combine them through the CLI, load the result with
:meth:`Predictor.load` and compare its logits with the base model carrying ``W0 + Σ w_i ΔW_i`` computed here from
the input files' tensors (DoRA: from each input merged into the base by its own ``merge()``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from adaptune import Predictor, load_config, train
from adaptune.cli import app
from adaptune.combine import LoRAPart, Plan, combine_linear
from adaptune.errors import ConfigError
from adaptune.io import load_adapter
from adaptune.merging import dare_drop, dare_linear, dare_ties, disjoint_mean, elect_sign, svd_factors, ties, trim

runner = CliRunner()
TEXTS = ["where is my parcel", "refund me please now", "has my order shipped yet"]


# --- tensors ----------------------------------------------------------------------------------------------------


def reference_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    k = int(density * delta.numel())
    order = sorted(range(delta.numel()), key=lambda i: -abs(float(delta.reshape(-1)[i])))
    out = torch.zeros(delta.numel())
    for i in order[:k]:
        out[i] = delta.reshape(-1)[i]
    return out.view_as(delta)


def reference_disjoint(trimmed: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Entry by entry: the sign of the sum of trimmed values, then the mean of the weighted agreeing ones."""
    out = torch.zeros_like(trimmed[0])
    for index in range(out.numel()):
        values = [float(t.reshape(-1)[index]) for t in trimmed]
        sign = 1.0 if sum(values) >= 0 else -1.0
        agreeing = [w * v for w, v in zip(weights, values, strict=True) if v != 0 and math.copysign(1, v) == sign]
        out.reshape(-1)[index] = sum(agreeing) / len(agreeing) if agreeing else 0.0
    return out


def deltas(count: int = 3, shape: tuple[int, int] = (4, 5), seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_trim_keeps_the_largest_fraction(density: float) -> None:
    delta = deltas(1, (6, 7))[0]
    assert torch.equal(trim(delta, density), reference_trim(delta, density))
    assert int((trim(delta, density) != 0).sum()) == int(density * delta.numel())


def test_elect_sign_and_disjoint_mean_against_loops() -> None:
    stacked = torch.stack(deltas(3))
    stacked[1, 0, 0] = 0.0  # a zero agrees with no sign
    weights = [0.5, 2.0, -1.0]
    weighted = stacked * torch.tensor(weights).view(-1, 1, 1)
    sign = elect_sign(stacked)
    assert torch.equal(sign, torch.where(stacked.sum(0) >= 0, 1.0, -1.0))
    expected = reference_disjoint(list(stacked), weights)
    torch.testing.assert_close(disjoint_mean(weighted, stacked, sign), expected)


@pytest.mark.parametrize("density", [0.3, 0.6])
def test_ties_is_trim_elect_disjoint_mean(density: float) -> None:
    inputs, weights = deltas(3), [1.0, 0.5, 0.8]
    expected = reference_disjoint([reference_trim(d, density) for d in inputs], weights)
    torch.testing.assert_close(ties(inputs, weights, density), expected)


def test_ties_matches_peft() -> None:
    merge_utils = pytest.importorskip("peft.utils.merge_utils")
    inputs, weights = deltas(3, (8, 9)), [1.0, 0.5, 0.8]
    expected = merge_utils.ties(inputs, torch.tensor(weights), 0.4, "total")
    torch.testing.assert_close(ties(inputs, weights, 0.4), expected)


def test_dare_drops_with_a_seeded_mask_and_rescales() -> None:
    delta, density = deltas(1, (200, 100))[0], 0.3
    dropped = dare_drop(delta, density, torch.Generator().manual_seed(7))
    mask = torch.rand(delta.shape, generator=torch.Generator().manual_seed(7)) < density
    assert torch.equal(dropped, torch.where(mask, delta / density, torch.zeros(())))
    assert abs(float(mask.float().mean()) - density) < 0.02  # each entry kept with probability density
    again = dare_drop(delta, density, torch.Generator().manual_seed(7))
    other = dare_drop(delta, density, torch.Generator().manual_seed(8))
    assert torch.equal(dropped, again) and not torch.equal(dropped, other)


def test_dare_linear_and_dare_ties_against_references() -> None:
    inputs, weights, density = deltas(3), [0.6, 0.4, 1.0], 0.5
    generator = torch.Generator().manual_seed(3)
    masks = [torch.rand(d.shape, generator=generator) < density for d in inputs]
    dropped = [torch.where(m, d / density, torch.zeros(())) for m, d in zip(masks, inputs, strict=True)]
    linear = sum(w * d for w, d in zip(weights, dropped, strict=True))
    torch.testing.assert_close(dare_linear(inputs, weights, density, torch.Generator().manual_seed(3)), linear)
    expected = reference_disjoint(dropped, weights)
    torch.testing.assert_close(dare_ties(inputs, weights, density, torch.Generator().manual_seed(3)), expected)


def test_svd_factors_meet_the_eckart_young_bound() -> None:
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(20, 12, generator=generator)
    singular = torch.linalg.svdvals(matrix)
    for rank in (1, 3, 6):
        factors = svd_factors(matrix, rank)
        assert factors.a.shape == (rank, 12) and factors.b.shape == (20, rank)
        error = float(torch.linalg.norm(matrix - factors.b @ factors.a) / torch.linalg.norm(matrix))
        bound = math.sqrt(float(singular[rank:].square().sum() / singular.square().sum()))
        assert error == pytest.approx(bound, rel=1e-4) and factors.error == pytest.approx(bound, rel=1e-4)
        other = torch.randn(20, rank, generator=generator) @ torch.randn(rank, 12, generator=generator)
        assert error <= float(torch.linalg.norm(matrix - other) / torch.linalg.norm(matrix))
    low = torch.randn(20, 2, generator=generator) @ torch.randn(2, 12, generator=generator)
    exact = svd_factors(low, 16)  # beyond min(out, in): zero-padded, exact
    assert exact.a.shape == (16, 12) and exact.b.shape == (20, 16) and exact.error < 1e-5
    torch.testing.assert_close(exact.b @ exact.a, low, atol=1e-5, rtol=1e-5)


def lora_part(out: int, inp: int, rank: int, scaling: float, seed: int, dora: bool = False) -> LoRAPart:
    generator = torch.Generator().manual_seed(seed)
    magnitude = torch.rand(out, generator=generator) + 0.5 if dora else None
    a, b = torch.randn(rank, inp, generator=generator), torch.randn(out, rank, generator=generator)
    return LoRAPart(a, b, scaling, magnitude)


def plan(how: str, weights: list[float], rank: int, dora: bool = False) -> Plan:
    return Plan(how, weights, None, rank, 0, True, dora)


def test_linear_concatenation_is_exact() -> None:
    parts = [lora_part(6, 5, 2, 8.0, 0), lora_part(6, 5, 3, 16 / math.sqrt(3), 1)]
    weights = [0.7, -0.3]
    factors = combine_linear(parts, None, plan("linear", weights, 5))
    expected = sum(w * p.scaling * (p.b @ p.a) for w, p in zip(weights, parts, strict=True))
    assert factors.a.shape == (5, 5) and factors.magnitude is None and factors.error == 0
    torch.testing.assert_close(factors.b @ factors.a, expected)
    svd = combine_linear(parts, None, plan("svd", weights, 5))  # rank Σ r_i: exact too
    torch.testing.assert_close(svd.b @ svd.a, expected, atol=1e-4, rtol=1e-4)


def test_dora_linear_is_exact_on_the_full_weights() -> None:
    """W0 + Σ w_i (W'_i - W0), with W'_i = m_i (W0 + s B A) / ||W0 + s B A||_c, is what the result computes."""
    w0 = torch.randn(6, 5, generator=torch.Generator().manual_seed(9))
    parts = [lora_part(6, 5, 2, 2.0, 0, dora=True), lora_part(6, 5, 2, 1.5, 1, dora=True), lora_part(6, 5, 1, 1.0, 2)]
    weights = [0.5, 0.3, -0.2]

    def effective(part: LoRAPart) -> torch.Tensor:
        direction = w0 + part.scaling * part.b @ part.a
        if part.magnitude is None:
            return direction
        return (part.magnitude / direction.norm(dim=1))[:, None] * direction

    target = w0 + sum(w * (effective(p) - w0) for w, p in zip(weights, parts, strict=True))
    factors = combine_linear(parts, w0, plan("linear", weights, 5, dora=True))
    assert factors.magnitude is not None
    written = LoRAPart(factors.a, factors.b, 1.0, factors.magnitude)
    torch.testing.assert_close(effective(written), target, atol=1e-5, rtol=1e-5)


# --- adapters on a tiny BERT ------------------------------------------------------------------------------------

ROWS = [
    ("where is my parcel", "order"),
    ("I want my money back", "refund"),
    ("has my order shipped", "order"),
    ("refund me please", "refund"),
    ("when does my package arrive", "order"),
    ("give me my money", "refund"),
]
THREE = [*ROWS, ("hello there", "greeting"), ("hi, good morning", "greeting")]


def rows_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tiny_bert: Path, other_tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``trained(name)``: the adapter folder of a tiny run named in :data:`RUNS`, trained on first use."""
    folder = tmp_path_factory.mktemp("combine")
    data = {"two": rows_file(folder / "two.jsonl", ROWS), "three": rows_file(folder / "three.jsonl", THREE)}
    runs = {
        "a": ("two", tiny_bert, ["method.r=2", "training.seed=0"]),
        "b": ("two", tiny_bert, ["method.r=3", "method.alpha=8", "training.seed=1", "method.use_rslora=true"]),
        "labels": ("three", tiny_bert, ["method.r=2"]),
        "query_only": ("two", tiny_bert, ["method.r=2", "method.roles=[query]"]),
        "other_base": ("two", other_tiny_bert, ["method.r=2"]),
        "bottleneck": ("two", tiny_bert, ["method.name=bottleneck", "method.reduction_factor=4"]),
        "dora_a": ("two", tiny_bert, ["method.r=2", "method.use_dora=true", "training.seed=2"]),
        "dora_b": ("two", tiny_bert, ["method.r=2", "method.use_dora=true", "training.seed=3"]),
    }
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            kind, base, overrides = runs[name]
            method = [] if any(o.startswith("method.name=") for o in overrides) else ["method.name=lora"]
            cfg = load_config(
                None,
                [
                    f"model.name_or_path={base}",
                    *method,
                    *overrides,
                    f"data.train={data[kind]}",
                    "data.batch_size=2",
                    "training.max_steps=4",
                    "training.learning_rate=0.05",
                    "training.progress=false",
                    f"training.output_dir={folder / name}",
                ],
            )
            done[name] = train(cfg).adapter_dir
        return done[name]

    return get


def combine(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["combine", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr.replace("\n", "")


def lora_delta(tensors: dict[str, torch.Tensor], host: str, scaling: float) -> torch.Tensor:
    return scaling * tensors[f"adapter.{host}.lora.lora_b.weight"] @ tensors[f"adapter.{host}.lora.lora_a.weight"]


def hosts_of(tensors: dict[str, torch.Tensor]) -> list[str]:
    suffix = ".lora.lora_a.weight"
    return sorted(k[len("adapter.") : -len(suffix)] for k in tensors if k.endswith(suffix))


def reference_logits(
    adapter: Path, weights_by_host: dict[str, torch.Tensor], head: dict[str, torch.Tensor]
) -> list[torch.Tensor]:
    """Logits of the base model whose adapted maps hold ``weights_by_host`` (W0 + the combined delta) and whose
    head is ``head``: ``adapter`` loaded merged (its hooks then add nothing), its weights and head replaced."""
    predictor = Predictor.load(adapter, merge=True, device="cpu")
    with torch.no_grad():
        for host, weight in weights_by_host.items():
            predictor.model.backbone.get_submodule(host).weight.copy_(weight)
    predictor.model.head.load_state_dict({k[len("head.") :]: v for k, v in head.items()})
    return predictor.logits(TEXTS)


def base_weights(adapter: Path, hosts: list[str]) -> dict[str, torch.Tensor]:
    model = Predictor.load(adapter, device="cpu").model.backbone
    return {host: model.get_submodule(host).weight.detach().clone() for host in hosts}


def test_linear_combination_is_base_plus_weighted_deltas(trained: Callable[[str], Path], tmp_path: Path) -> None:
    a, b, out = trained("a"), trained("b"), tmp_path / "linear"
    code, stdout, stderr = combine(a, b, "--how", "linear", "--weights", "0.7,0.3", "--out", out)
    assert code == 0, stderr
    assert "linear, rank 5, exact" in stdout.replace("\n", "") and "averaged the heads" in stderr
    ta, tb = load_file(a / "adapter.safetensors"), load_file(b / "adapter.safetensors")
    hosts = hosts_of(ta)
    w0 = base_weights(a, hosts)
    combined = {h: w0[h] + 0.7 * lora_delta(ta, h, 16 / 2) + 0.3 * lora_delta(tb, h, 8 / math.sqrt(3)) for h in hosts}
    head = {k: 0.7 * v + 0.3 * tb[k] for k, v in ta.items() if k.startswith("head.")}
    predictor = Predictor.load(out, device="cpu")
    for got, want in zip(predictor.logits(TEXTS), reference_logits(a, combined, head), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert [p["label"] for p in predictor.predict(TEXTS)] and predictor.labels == ["order", "refund"]
    description = load_adapter(out).config
    record = description["combine"]
    assert record["how"] == "linear" and record["weights"] == [0.7, 0.3] and record["density"] is None
    assert record["inputs"] == [str(a), str(b)] and record["exact"] is True
    assert description["method"]["r"] == 5 and description["method"]["alpha"] == 5.0
    assert description["metrics"]["notes"] == record["notes"]
    merged = Predictor.load(out, merge=True, device="cpu").logits(TEXTS)
    for got, want in zip(merged, predictor.logits(TEXTS), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def reference_merge(how: str, inputs: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """The merge of two full deltas with weights 1, 0.5 and density 0.4 (each checked against loops above)."""
    if how == "ties":
        return ties(inputs, [1.0, 0.5], 0.4)
    if how == "dare_linear":
        return dare_linear(inputs, [1.0, 0.5], 0.4, generator)
    if how == "dare_ties":
        return dare_ties(inputs, [1.0, 0.5], 0.4, generator)
    return inputs[0] + 0.5 * inputs[1]


@pytest.mark.parametrize("how", ["ties", "dare_linear", "dare_ties", "svd"])
def test_refactored_combinations_hold_the_reference_delta(
    how: str, trained: Callable[[str], Path], tmp_path: Path
) -> None:
    """At rank 32 (= min(out, in) of the tiny BERT's maps) the SVD refactoring loses nothing, so B A must be the
    reference merge of the full deltas; at the default rank the file is still an ordinary loadable adapter."""
    a, b = trained("a"), trained("b")
    density = [] if how == "svd" else ["--density", "0.4"]
    code, _, stderr = combine(
        a, b, "--how", how, "--weights", "1,0.5", *density, "--rank", "32", "--out", tmp_path / how
    )
    assert code == 0, stderr
    ta, tb, out = (load_file(p / "adapter.safetensors") for p in (a, b, tmp_path / how))
    generator = torch.Generator().manual_seed(0)
    for host in hosts_of(ta):
        inputs = [lora_delta(ta, host, 8.0), lora_delta(tb, host, 8 / math.sqrt(3))]
        want = reference_merge(how, inputs, generator)
        torch.testing.assert_close(lora_delta(out, host, 1.0), want, atol=1e-4, rtol=1e-4)
    code, stdout, stderr = combine(a, b, "--how", how, *density, "--out", tmp_path / f"{how}_default")
    assert code == 0, stderr
    rank = 3 if how == "svd" else 5  # svd: the largest input rank; the others: Σ r_i
    assert load_adapter(tmp_path / f"{how}_default").config["method"]["r"] == rank
    assert f"rank {rank}, approximate" in stdout.replace("\n", "")
    assert Predictor.load(tmp_path / f"{how}_default", device="cpu").predict(TEXTS)


def test_dare_is_seeded(trained: Callable[[str], Path], tmp_path: Path) -> None:
    a, b = trained("a"), trained("b")
    files = []
    for name, seed in (("one", "0"), ("again", "0"), ("other", "1")):
        assert combine(a, b, "--how", "dare_linear", "--seed", seed, "--out", tmp_path / name)[0] == 0
        files.append(load_file(tmp_path / name / "adapter.safetensors"))
    key = next(k for k in files[0] if k.endswith("lora_b.weight"))
    assert torch.equal(files[0][key], files[1][key]) and not torch.equal(files[0][key], files[2][key])
    assert load_adapter(tmp_path / "one").config["combine"]["seed"] == 0


def test_negation_subtracts_exactly(trained: Callable[[str], Path], tmp_path: Path) -> None:
    a, b = trained("a"), trained("b")
    code, _, stderr = combine(a, b, "--how", "negation", "--out", tmp_path / "a_minus_b")
    assert code == 0 and f"kept the head of {a}" in stderr and "positive weights" in stderr
    assert combine(a, "--how", "negation", "--out", tmp_path / "minus_a")[0] == 0
    ta, tb = load_file(a / "adapter.safetensors"), load_file(b / "adapter.safetensors")
    diff, minus = (load_file(tmp_path / n / "adapter.safetensors") for n in ("a_minus_b", "minus_a"))
    for host in hosts_of(ta):
        want = lora_delta(ta, host, 8.0) - lora_delta(tb, host, 8 / math.sqrt(3))
        torch.testing.assert_close(lora_delta(diff, host, 1.0), want)
        torch.testing.assert_close(lora_delta(minus, host, 1.0), -lora_delta(ta, host, 8.0))
    assert torch.equal(diff["head.classifier.weight"], ta["head.classifier.weight"])
    code, _, stderr = combine(a, b, "--how", "negation", "--weights", "1,-1", "--out", tmp_path / "x")
    assert code == 2 and "negation sets the weights itself" in stderr


def test_dora_linear_combination_is_exact(trained: Callable[[str], Path], tmp_path: Path) -> None:
    a, b, out = trained("dora_a"), trained("dora_b"), tmp_path / "dora"
    code, _, stderr = combine(a, b, "--how", "linear", "--weights", "0.6,0.4", "--out", out)
    assert code == 0, stderr
    assert load_adapter(out).config["method"]["use_dora"] is True
    weights = [0.6, 0.4]
    hosts = hosts_of(load_file(a / "adapter.safetensors"))
    w0 = base_weights(a, hosts)
    merged = [Predictor.load(p, merge=True, device="cpu").model.backbone for p in (a, b)]
    target = {
        h: w0[h] + sum(w * (m.get_submodule(h).weight - w0[h]) for w, m in zip(weights, merged, strict=True))
        for h in hosts
    }
    ta, tb = load_file(a / "adapter.safetensors"), load_file(b / "adapter.safetensors")
    head = {k: 0.6 * v + 0.4 * tb[k] for k, v in ta.items() if k.startswith("head.")}
    got = Predictor.load(out, device="cpu").logits(TEXTS)
    for left, right in zip(got, reference_logits(a, target, head), strict=True):
        torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    code, _, stderr = combine(a, b, "--how", "ties", "--out", tmp_path / "dora_ties")
    assert code == 2 and "not defined for DoRA" in stderr


def test_eval_prints_a_before_after_table(trained: Callable[[str], Path], tmp_path: Path) -> None:
    a, b, out = trained("a"), trained("b"), tmp_path / "evaluated"
    data = rows_file(tmp_path / "dev.jsonl", ROWS[:4])
    code, stdout, stderr = combine(a, b, "--how", "linear", "--weights", "0.5,0.5", "--out", out, "--eval", data)
    assert code == 0, stderr
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("adapter (accuracy)"))
    assert str(data) in lines[header]
    rows = lines[header + 1 : header + 4]
    assert [r.split()[0] for r in rows] == [str(a), str(b), str(out)] and "(combined)" in rows[2]
    accuracy = Predictor.load(out, device="cpu").evaluate(data).headline["accuracy"]
    assert float(rows[2].split()[-1]) == pytest.approx(accuracy, abs=1e-4)


# --- refusals ---------------------------------------------------------------------------------------------------


def test_refuses_adapters_of_another_base(trained: Callable[[str], Path], tmp_path: Path) -> None:
    code, _, stderr = combine(trained("a"), trained("other_base"), "--how", "linear", "--out", tmp_path / "x")
    assert code == 2 and "was trained on another base model" in stderr and "one base model" in stderr
    assert not (tmp_path / "x").exists()


def test_refuses_a_method_other_than_lora(trained: Callable[[str], Path], tmp_path: Path) -> None:
    code, _, stderr = combine(trained("a"), trained("bottleneck"), "--how", "linear", "--out", tmp_path / "x")
    assert code == 2 and "uses method 'bottleneck'" in stderr and "LoRA" in stderr


def test_refuses_other_target_modules(trained: Callable[[str], Path], tmp_path: Path) -> None:
    code, _, stderr = combine(trained("a"), trained("query_only"), "--how", "linear", "--out", tmp_path / "x")
    assert code == 2 and "adapts other modules" in stderr and "attention.self.value" in stderr


def test_refuses_a_wrong_number_of_weights_and_options_that_do_not_apply(
    trained: Callable[[str], Path], tmp_path: Path
) -> None:
    a, b = trained("a"), trained("b")
    cases = [
        (["--weights", "0.5,0.3,0.2"], "3 weights given for 2 adapters"),
        (["--weights", "0.5,x"], "give numbers separated by commas"),
        (["--density", "0.5"], "--density applies to ties"),
        (["--rank", "2"], "--rank does not apply to --how linear"),
    ]
    for extra, message in cases:
        code, _, stderr = combine(a, b, "--how", "linear", *extra, "--out", tmp_path / "x")
        assert code == 2 and message in stderr, stderr
    code, _, stderr = combine(a, b, "--how", "ties", "--density", "1.5", "--out", tmp_path / "x")
    assert code == 2 and "must be in (0, 1]" in stderr


def test_different_labels_keep_the_first_head_and_say_why(trained: Callable[[str], Path], tmp_path: Path) -> None:
    a, three, out = trained("a"), trained("labels"), tmp_path / "kept"
    code, _, stderr = combine(a, three, "--how", "linear", "--weights", "0.5,0.5", "--out", out)
    assert code == 0, stderr
    assert f"kept the head of {a}" in stderr and "the label sets agree in the same order" in stderr
    description = load_adapter(out).config
    assert any("kept the head" in note for note in description["metrics"]["notes"])
    assert description["labels"] == ["order", "refund"]
    tensors = load_file(out / "adapter.safetensors")
    assert torch.equal(
        tensors["head.classifier.weight"], load_file(a / "adapter.safetensors")["head.classifier.weight"]
    )
    assert {p["label"] for p in Predictor.load(out, device="cpu").predict(TEXTS)} <= {"order", "refund"}


def test_refuses_different_task_kinds(trained: Callable[[str], Path]) -> None:
    """Checked on the descriptions (a token_cls run would need its own data): the kinds are named."""
    from adaptune.combine import check_inputs
    from adaptune.io import AdapterFile

    first = load_adapter(trained("a"))
    other = AdapterFile(Path("tagger"), dict(first.config, task={"name": "token_cls"}), first.tensors)
    with pytest.raises(ConfigError, match=r"adapter tagger is for another task \('token_cls', not 'seq_cls'\)"):
        check_inputs([first, other])
