"""``metaplug predict`` and ``metaplug export`` end to end, on both backends: regression runs
(sinusoid, CSV support sets) and classification runs (real Omniglot, folders of PNG images).
Each exported artefact is loaded in a clean interpreter that cannot import metaplug and
must predict what metaplug predicts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_assertions import assert_one_line_error

from metaplug.errors import ConfigError, DatasetError
from metaplug.experiment.predict import export, predict
from metaplug.experiment.runner import restore
from metaplug.experiment.support import read_queries, read_support

DATA = Path(os.environ.get("METAPLUG_DATA_DIR", "/nonexistent")) / "omniglot"
QUICK = ("--meta-batch-size", "2", "--val-tasks", "2", "--test-tasks", "2", "--log-every", "100")
IMAGES = ("--tasks", "omniglot", "--ways", "5", "--shots", "1", "--queries", "1", "--set", "model.filters=8")
RUNS = {
    "sinusoid-torch": ("--backend", "torch", "--iterations", "30"),
    "sinusoid-tensorflow": ("--backend", "tensorflow", "--iterations", "30"),
    "omniglot-torch": ("--backend", "torch", "--algorithm", "protonet", "--iterations", "3", *IMAGES),
    "omniglot-tensorflow": ("--backend", "tensorflow", "--algorithm", "maml", "--iterations", "2", *IMAGES),
}


def metaplug(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(name)``: the trained run of :data:`RUNS` (trained once, on first use)."""
    root, done = tmp_path_factory.mktemp("runs"), {}

    def trained(name: str) -> Path:
        backend = RUNS[name][1]
        if importlib.util.find_spec(f"metaplug_{backend}") is None:
            pytest.skip(f"metaplug-{backend} is not installed")
        if name.startswith("omniglot") and not (DATA / "images_evaluation.zip").is_file():
            pytest.skip("real Omniglot not found; set METAPLUG_DATA_DIR")
        if name not in done:
            result = metaplug("train", *RUNS[name], "--run-dir", str(root / name), *QUICK)
            assert result.returncode == 0, result.stderr
            done[name] = root / name
        return done[name]

    return trained


def sinusoid_files(folder: Path) -> tuple[Path, Path]:
    """A support CSV of 10 points of one sinusoid and a query CSV of 6 inputs."""
    x = np.random.default_rng(0).uniform(-5, 5, 10)
    (folder / "support.csv").write_text("x,y\n" + "".join(f"{a},{2 * np.sin(a - 0.5)}\n" for a in x))
    (folder / "query.csv").write_text("x\n" + "".join(f"{a}\n" for a in np.linspace(-4, 4, 6)))
    return folder / "support.csv", folder / "query.csv"


def omniglot_files(folder: Path, classes: int = 5) -> tuple[Path, Path, list[str]]:
    """Real Omniglot PNGs, unchanged from the archive: two drawings per character in
    ``support/<character>/`` and a third in ``query/``."""
    with zipfile.ZipFile(DATA / "images_evaluation.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        characters = sorted({n.rsplit("/", 1)[0] for n in names})[:classes]
        for c, character in enumerate(characters):
            drawings = [n for n in names if n.startswith(character + "/")][:3]
            for d, name in enumerate(drawings):
                target = folder / "support" / f"char{c}" / f"{d}.png" if d < 2 else folder / "query" / f"char{c}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
    return folder / "support", folder / "query", characters


def expected_predictions(run_dir: Path, support: Path, queries: list[Path]) -> np.ndarray:
    """What the Python API predicts for the same files."""
    experiment, _ = restore(run_dir)
    examples = read_support(support, experiment.spec, experiment.train_sampler)
    query = read_queries(queries, experiment.spec, experiment.train_sampler)
    return experiment.algorithm.adapt(examples.x, examples.y).predict(query.x)


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_predict_a_regression_task_from_csv_files(run, tmp_path, backend):
    run_dir = run(f"sinusoid-{backend}")
    support, query = sinusoid_files(tmp_path)
    done = metaplug("predict", str(run_dir), "--support", str(support), "--query", str(query), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["query"] for r in rows] == [f"row {i}" for i in range(2, 8)]
    expected = expected_predictions(run_dir, support, [query])
    np.testing.assert_allclose([r["output_0"] for r in rows], expected[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_predict_classes_of_images_from_class_folders(run, tmp_path, backend):
    run_dir = run(f"omniglot-{backend}")
    support, query, _ = omniglot_files(tmp_path)
    out = tmp_path / "predictions.csv"
    done = metaplug("predict", str(run_dir), "--support", str(support), "--query", str(query), "--out", str(out))
    assert done.returncode == 0 and "5 predictions written" in done.stdout, done.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "query,prediction," + ",".join(f"p(char{c})" for c in range(5))
    probabilities = np.array([[float(v) for v in line.split(",")[2:]] for line in lines[1:]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    logits = expected_predictions(run_dir, support, [query])
    assert [line.split(",")[1] for line in lines[1:]] == [f"char{k}" for k in logits.argmax(axis=1)]


@pytest.mark.skipif(not (DATA / "images_evaluation.zip").is_file(), reason="real Omniglot not found")
def test_images_are_read_exactly_as_the_omniglot_sampler_decodes_them(tmp_path):
    from metaplug.tasks.omniglot import OmniglotSampler, load_images

    support, _, characters = omniglot_files(tmp_path, classes=2)
    sampler = OmniglotSampler("test", seed=0, root=str(DATA))
    examples = read_support(support, sampler.spec, sampler)
    images = load_images(str(DATA), 28)
    index = list(images.characters).index(characters[1])
    decoded = images.images[index, :2].astype(np.float32) / 255.0
    np.testing.assert_array_equal(examples.x[2:, 0], decoded)
    assert examples.classes == ["char0", "char1"] and list(examples.y) == [0, 0, 1, 1]


def test_a_support_set_that_does_not_fit_the_run_is_one_line(run, tmp_path):
    run_dir = run("sinusoid-torch")
    experiment, _ = restore(run_dir)
    _support, query = sinusoid_files(tmp_path)
    (tmp_path / "wide.csv").write_text("x,y,z\n1,2,3\n")
    (tmp_path / "text.csv").write_text("x,y\n1,2\n3,four\n")
    with pytest.raises(ConfigError, match=r"wide.csv has 3 columns; the run needs 2: 1 feature\(s\), then 1 target"):
        predict(experiment, tmp_path / "wide.csv", [query])
    with pytest.raises(ConfigError, match=r"text.csv row 3, column 'y': 'four' is not a number"):
        predict(experiment, tmp_path / "text.csv", [query])
    with pytest.raises(ConfigError, match="the run takes inputs of shape \\(1,\\), not images"):
        predict(experiment, tmp_path, [query])
    done = metaplug("predict", str(run_dir), "--support", str(tmp_path / "missing.csv"), "--query", str(query))
    assert_one_line_error(done, "missing.csv does not exist")


def test_image_support_sets_that_do_not_fit_are_one_line(run, tmp_path):
    run_dir = run("omniglot-torch")
    experiment, _ = restore(run_dir)
    support, query, _ = omniglot_files(tmp_path, classes=6)
    with pytest.raises(ConfigError, match="has 6 classes; the run was trained for 5-way tasks"):
        predict(experiment, support, [query])
    for extra in ("char4", "char5"):
        for png in (support / extra).iterdir():
            png.unlink()
    with pytest.raises(ConfigError, match="class folder .*char4 holds no images"):
        predict(experiment, support, [query])
    (support / "char4").rmdir()
    (support / "char5" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image .*broken.png"):
        predict(experiment, support, [query])


LOAD = """
import json, sys
import numpy as np
for name in ("metaplug", "metaplug_torch", "metaplug_tensorflow"):
    sys.modules[name] = None  # importing metaplug fails here
x = np.load(sys.argv[2])
out = {}
for path, kind in json.loads(sys.argv[1]):
    if kind == "onnx":
        import onnxruntime
        y = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    elif kind == "torch-export":
        import torch
        y = torch.export.load(path).module()(torch.from_numpy(x)).detach().numpy()
    elif kind == "savedmodel":
        import tensorflow as tf
        served = tf.saved_model.load(path)  # kept: its variables live as long as it does
        y = served.serve(tf.constant(x))["outputs"].numpy()
    else:
        from safetensors.numpy import load_file
        y = np.concatenate([v.ravel() for _, v in sorted(load_file(path).items())])
    out[path] = y.tolist()
print(json.dumps(out))
"""


def load_elsewhere(artefacts: list[tuple[Path, str]], x: np.ndarray, tmp_path: Path) -> dict[str, np.ndarray]:
    """Each artefact's outputs on ``x``, computed in an interpreter where metaplug cannot be imported."""
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    jobs = json.dumps([(str(p), kind) for p, kind in artefacts])
    done = subprocess.run(
        [sys.executable, "-c", LOAD, jobs, str(tmp_path / "x.npy")], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    return {k: np.asarray(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.parametrize(
    "backend, formats",
    [("torch", ["torch-export", "onnx", "safetensors"]), ("tensorflow", ["savedmodel", "safetensors"])],
)
def test_exported_models_predict_without_metaplug(run, tmp_path, backend, formats):
    run_dir = run(f"sinusoid-{backend}")
    experiment, _ = restore(run_dir)
    support, query = sinusoid_files(tmp_path)
    x = read_queries([query], experiment.spec).x
    adapted = experiment.algorithm.adapt(*(lambda e: (e.x, e.y))(read_support(support, experiment.spec)))
    initial = experiment.algorithm.initial_model()
    artefacts = []
    suffixes = {"torch-export": ".pt2", "onnx": ".onnx", "safetensors": ".safetensors", "savedmodel": ""}
    for format in formats:
        artefacts.append((export(experiment, format, tmp_path / f"adapted{suffixes[format]}", support), format))
        artefacts.append((export(experiment, format, tmp_path / f"initial{suffixes[format]}"), format))
    outputs = load_elsewhere(artefacts, x, tmp_path)
    for (path, format), model in zip(artefacts, [adapted, initial] * len(formats), strict=True):
        expected = (
            np.concatenate([v.ravel() for _, v in sorted(model.weights().items())])
            if format == "safetensors"
            else model.predict(x)
        )
        np.testing.assert_allclose(
            outputs[str(path)].reshape(expected.shape), expected, rtol=1e-5, atol=1e-5, err_msg=str(path)
        )


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_an_adapted_conv4_with_batch_norm_exports_to_onnx(run, tmp_path):
    run_dir = run("omniglot-torch")
    support, query, _ = omniglot_files(tmp_path)
    done = metaplug(
        "export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--support", str(support)
    )
    assert done.returncode == 0 and "protonet model adapted to" in done.stdout, done.stderr
    experiment, _ = restore(run_dir)
    x = read_queries([query], experiment.spec, experiment.train_sampler).x
    outputs = load_elsewhere([(tmp_path / "m.onnx", "onnx")], x, tmp_path)
    np.testing.assert_allclose(
        outputs[str(tmp_path / "m.onnx")], expected_predictions(run_dir, support, [query]), rtol=1e-5, atol=1e-4
    )


def test_export_refusals_are_one_line(run, tmp_path):
    run_dir = run("sinusoid-tensorflow")
    done = metaplug("export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert_one_line_error(
        done, "a tensorflow run exports safetensors, savedmodel, not 'onnx'", "train on torch for ONNX"
    )
    (tmp_path / "taken.safetensors").write_text("mine")
    done = metaplug("export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "taken.safetensors"))
    assert_one_line_error(done, "taken.safetensors exists; remove it, choose another --out, or pass --force")
    assert (tmp_path / "taken.safetensors").read_text() == "mine"
    done = metaplug("export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "weights.npz"))
    assert_one_line_error(done, "--out of a safetensors export ends in .safetensors", "weights.npz")
