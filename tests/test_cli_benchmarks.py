"""Every configuration in ``benchmarks/`` resolves with ``metaplug train --config F --dry-run``
on every installed backend, and each CPU-budget tier keeps its full protocol but for training length
(and, for MAML++, the model width and meta-batch its header names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import metaplug.cli.train  # noqa: F401  (adds the train command)
from metaplug.cli import cli
from metaplug.plugins.discovery import registry

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
CONFIGS = sorted(BENCHMARKS.glob("*.toml"))
BACKENDS = ("torch", "tensorflow")
TRAINING_LENGTH = {"iterations", "val_every", "val_tasks", "checkpoint_every", "log_every"}
"""The ``[train]`` keys a CPU-budget tier may shorten; everything else is the published protocol."""
SCALED = {"mamlpp-omniglot-5w1s-cpu": {"model": {"filters"}, "train": {"meta_batch_size"}}}
"""Further keys a tier scales down (its header says why): MAML++'s 12 s meta-steps need a smaller model
and meta-batch to train on a CPU; its schedules then follow the run's length (checked below)."""


def resolve(path: Path, backend: str) -> dict:
    if backend not in registry().names("backends"):
        pytest.skip(f"backend {backend} is not installed")
    done = CliRunner().invoke(
        cli, ["train", "--config", str(path), "--backend", backend, "--dry-run", "--format", "json"]
    )
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_the_folder_has_every_published_setting():
    names = {p.stem for p in CONFIGS}
    settings = ("5w1s", "5w5s", "20w1s", "20w5s")
    for algorithm in ("maml", "fomaml", "protonet", "reptile"):
        assert {f"{algorithm}-omniglot-{s}" for s in settings} <= names
    assert {"anil-omniglot-20w1s", "anil-omniglot-20w5s"} <= names
    assert {"protonet-omniglot-5w1s-cpu", "maml-omniglot-5w1s-cpu", "reptile-omniglot-5w1s-cpu"} <= names
    assert "mamlpp-omniglot-5w1s-cpu" in names
    assert {f"{a}-sinusoid-k{k}" for a in ("maml", "finetune") for k in (5, 10)} <= names
    for dataset in ("mini-imagenet", "cifar-fs", "fc100", "tiered-imagenet", "cub"):
        assert {f"protonet-{dataset}-5w1s", f"protonet-{dataset}-5w5s"} <= names
    assert {f"maml-{d}-5w{k}s" for d in ("mini-imagenet", "cifar-fs") for k in (1, 5)} <= names
    assert {"relationnet-omniglot-5w1s", "relationnet-omniglot-5w5s", "relationnet-omniglot-20w1s"} <= names
    assert {f"{a}-omniglot-5w1s{t}" for a in ("relationnet", "r2d2", "metalstm") for t in ("", "-cpu")} <= names
    assert {f"{a}-mini-imagenet-5w{k}s" for a in ("relationnet", "r2d2", "metalstm") for k in (1, 5)} <= names


@pytest.mark.parametrize(
    ("path", "filters"),
    [
        (p, 32 if p.stem.startswith(("maml", "metalstm")) else 64)
        for p in CONFIGS
        if "imagenet" in p.stem or "cifar" in p.stem
    ],
    ids=lambda v: getattr(v, "stem", str(v)),
)
def test_the_standard_benchmarks_use_the_papers_conv4_and_image_size(path, filters):
    resolved = resolve(path, "torch")
    assert resolved["model"]["name"] == "conv4" and resolved["model"]["filters"] == filters
    size = 32 if resolved["tasks"]["name"] in ("cifar-fs", "fc100") else 84
    assert resolved["tasks"]["image_size"] == size
    assert "Not run here: needs the dataset" in path.read_text()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_each_config_resolves_on_each_backend(path, backend):
    resolved = resolve(path, backend)
    algorithm, dataset = resolved["algorithm"]["name"], resolved["tasks"]["name"]
    assert resolved["backend"] == backend
    assert path.stem.startswith(f"{algorithm}-{dataset}-"), "files are named ALGORITHM-DATASET-SETTING"
    shape = {
        k: resolved["evaluation"].get(k) or resolved["tasks"][k] for k in ("ways", "shots") if k in resolved["tasks"]
    }
    if dataset != "sinusoid":
        setting = path.stem.removeprefix(f"{algorithm}-{dataset}-").split("-")[0]
        assert setting == f"{shape['ways']}w{shape['shots']}s", "test episodes must match the file's setting"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith("-cpu")], ids=lambda p: p.stem)
def test_a_cpu_tier_is_its_full_protocol_with_shorter_training(path):
    short = resolve(path, "torch")
    full = resolve(path.with_name(path.name.replace("-cpu", "")), "torch")
    assert short["train"]["iterations"] < full["train"]["iterations"]
    scaled = SCALED.get(path.stem, {})
    for section, keys in scaled.items():
        assert all(short[section][k] < full[section][k] for k in keys), section
    for section in set(full) | set(short):
        if section == "train":
            kept = set(full["train"]) - TRAINING_LENGTH - scaled.get("train", set())
            assert {k: short["train"][k] for k in kept} == {k: full["train"][k] for k in kept}
        elif section == "algorithm" and full["algorithm"]["name"] == "mamlpp":
            # MAML++'s schedules keep their share of the run: the multi-step loss anneals over the
            # same fraction of it, the cosine annealing spans it whole
            fraction = full["algorithm"]["multi_step_loss_steps"] / full["train"]["iterations"]
            assert short["algorithm"]["multi_step_loss_steps"] == round(fraction * short["train"]["iterations"])
            assert full["algorithm"]["cosine_steps"] == full["train"]["iterations"]
            assert short["algorithm"]["cosine_steps"] == short["train"]["iterations"]
            schedules = {"multi_step_loss_steps", "cosine_steps"}
            assert {k: v for k, v in short["algorithm"].items() if k not in schedules} == {
                k: v for k, v in full["algorithm"].items() if k not in schedules
            }
        elif section == "optimizer" and full["optimizer"].get("final_lr") is not None:
            # an annealed step size spans the whole run, whatever its length (supervised-reptile)
            assert full["optimizer"]["anneal_steps"] == full["train"]["iterations"]
            assert short["optimizer"] == {**full["optimizer"], "anneal_steps": short["train"]["iterations"]}
        elif section in scaled:
            keys = scaled[section]
            assert {k: v for k, v in short[section].items() if k not in keys} == {
                k: v for k, v in full[section].items() if k not in keys
            }, section
        else:
            assert short[section] == full[section], section
