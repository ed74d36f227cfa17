"""The conformance suite catches what it claims to: each deliberately broken plugin
fails exactly the check for its defect, and a correct one passes them all.

The algorithm doubles subclass the PyTorch plugin's MAML (skipped without it); the
task-sampler doubles are plain numpy. Each run is a pytest subprocess over a
generated test module, so the doubles' plugins are discovered like real ones.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from plugin_factory import write_plugin

ALGORITHM_HOOKS = """
from metaplug import Component, hookimpl

NAMES = ["good", "uphill", "forgetful", "noisy", "aliasing", "flat", "overeager", "loose"]

@hookimpl
def register_algorithms(register):
    for name in NAMES:
        register(Component(name=name, summary=f"MAML double: {name}.", target=f"doubles_impl:{name.capitalize()}",
                           backends=("torch",), problems=("regression",)))
"""

ALGORITHM_IMPL = """
from dataclasses import dataclass

import numpy as np
from metaplug import option
from metaplug.contract.hyperparameters import MAMLOptions
from metaplug_torch.algorithms.maml import MAML


class Good(MAML):
    problems = ("regression",)  # as registered

    def state_dict(self):
        return {k: np.array(v, copy=True) for k, v in super().state_dict().items()}


class Uphill(Good):  # reports adaptation backwards
    def evaluate(self, batch, steps=None):
        result = super().evaluate(batch, steps)
        result["loss"], result["loss_before"] = result["loss_before"], result["loss"]
        return result


class Forgetful(Good):  # drops the outer optimizer's state
    def state_dict(self):
        return {k: v for k, v in super().state_dict().items() if not k.startswith("optimizer.")}


class Noisy(Good):  # unseeded perturbation of the initial weights
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import torch
        with torch.no_grad():
            for p in self.params.values():
                p.add_(torch.from_numpy(np.random.default_rng().normal(scale=1e-3, size=tuple(p.shape))).float())


class Aliasing(MAML):  # hands out views of the live weights
    problems = ("regression",)

    def state_dict(self):
        state = super().state_dict()
        for name, p in self.model.module.state_dict().items():
            state["model." + name] = p.detach().numpy()
        return state


class Flat(Good):  # averages over tasks instead of reporting each
    def evaluate(self, batch, steps=None):
        return {k: np.asarray(v.mean()) for k, v in super().evaluate(batch, steps).items()}


class Overeager(Good):  # declares regression only, but accepts classification silently
    problems = ("regression", "classification")


class LooseOptions(MAMLOptions):  # no @dataclass: 'momentum' is no option, describe() omits it
    momentum: float = option(0.0, minimum=0)


class Loose(Good):
    Options = LooseOptions
"""

HEAVY_ENTRY = """
import torch  # imported at discovery: the defect
from metaplug import Component, hookimpl

@hookimpl
def register_task_samplers(register):
    register(Component(name="heavy", summary="Imports torch at discovery.",
                       target="metaplug.tasks.sinusoid:SinusoidSampler", problems=("regression",)))
"""

EAGER_ENTRY = """
from metaplug import Component, hookimpl
import eager_impl  # the implementation is imported at discovery: the defect

@hookimpl
def register_task_samplers(register):
    register(Component(name="eager", summary="Imports its implementation at discovery.",
                       target="eager_impl:Sampler", problems=("regression",)))
"""

SAMPLER_HOOKS = """
from metaplug import Component, hookimpl

@hookimpl
def register_task_samplers(register):
    for name in ("float64", "offbyone", "unseeded", "stateless"):
        register(Component(name=name, summary=f"Sinusoid double: {name}.", target=f"samplers_impl:{name.capitalize()}",
                           problems=("regression",) if name != "offbyone" else ("classification",)))
"""

SAMPLER_IMPL = """
import dataclasses
import numpy as np
from metaplug.tasks.sinusoid import SinusoidSampler
from metaplug.testing import PrototypeSampler


class Float64(SinusoidSampler):  # targets in the wrong dtype
    def sample(self, num_tasks):
        batch = super().sample(num_tasks)
        return dataclasses.replace(batch, support_y=batch.support_y.astype(np.float64))


class Offbyone(PrototypeSampler):  # labels 1..ways instead of 0..ways-1
    def sample(self, num_tasks):
        batch = super().sample(num_tasks)
        return dataclasses.replace(batch, support_y=batch.support_y + 1, query_y=batch.query_y + 1)


class Unseeded(SinusoidSampler):  # ignores the seed
    def __init__(self, split="train", seed=0, **options):
        super().__init__(split, int(np.random.default_rng().integers(1 << 30)), **options)


class Stateless(SinusoidSampler):  # state that does not restore the generator
    def load_state_dict(self, state):
        pass
"""

SAMPLER_TESTS = """
from metaplug.testing import TaskSamplerConformance

class TestSinusoid(TaskSamplerConformance):
    sampler = "sinusoid"

class TestFloat64(TaskSamplerConformance):
    sampler = "float64"

class TestOffbyone(TaskSamplerConformance):
    sampler = "offbyone"

class TestUnseeded(TaskSamplerConformance):
    sampler = "unseeded"

class TestStateless(TaskSamplerConformance):
    sampler = "stateless"

class TestHeavy(TaskSamplerConformance):
    sampler = "heavy"

class TestEager(TaskSamplerConformance):
    sampler = "eager"
"""

ALGORITHM_TESTS = """
from metaplug.testing import AlgorithmConformance

class Base(AlgorithmConformance):
    backend = "torch"
    tasks = 2

""" + "\n".join(
    f'class Test{n.capitalize()}(Base):\n    algorithm = "{n}"\n'
    for n in ["good", "uphill", "forgetful", "noisy", "aliasing", "flat", "overeager", "loose"]
)


def run_suite(site: Path, tests: str, select: str | None = None) -> dict[str, str]:
    """Run the generated test module; return ``{"Class::test[param]": "passed"|"failed"|"skipped"}``."""
    module = site / "test_generated_conformance.py"
    module.write_text(textwrap.dedent(tests))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *sys.path]))
    env.pop("METAPLUG_PLUGINS", None)
    env.pop("METAPLUG_DISABLE_PLUGINS", None)
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(module),
        "-rA",
        "-q",
        "-p",
        "no:cacheprovider",
        "--import-mode=importlib",
        "--rootdir",
        str(site),
    ]
    if select:
        command += ["-k", select]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=site, timeout=600)
    outcomes = {
        m.group(2): m.group(1).lower()
        for m in re.finditer(r"^(PASSED|FAILED|SKIPPED|ERROR) \S+?::(\S+)", result.stdout, re.MULTILINE)
    }
    assert outcomes, result.stdout + result.stderr
    return outcomes


def failed(outcomes: dict[str, str], prefix: str) -> set[str]:
    return {k.split("::", 1)[1] for k, v in outcomes.items() if k.startswith(prefix + "::") and v == "failed"}


def test_sampler_checks_catch_each_defect(tmp_path):
    site = tmp_path / "site"
    write_plugin(site, "samplers_double", SAMPLER_HOOKS, distribution="metaplug-samplers-double")
    (site / "samplers_impl.py").write_text(SAMPLER_IMPL)
    write_plugin(site, "heavy_double", HEAVY_ENTRY, distribution="metaplug-heavy-double")
    write_plugin(site, "eager_double", EAGER_ENTRY, distribution="metaplug-eager-double")
    (site / "eager_impl.py").write_text("from metaplug.tasks.sinusoid import SinusoidSampler as Sampler\n")
    outcomes = run_suite(site, SAMPLER_TESTS)

    assert failed(outcomes, "TestSinusoid") == set()
    assert failed(outcomes, "TestFloat64") == {"test_episodes_have_documented_shapes_and_dtypes"}
    assert failed(outcomes, "TestOffbyone") == {"test_episodes_have_documented_shapes_and_dtypes"}
    assert failed(outcomes, "TestUnseeded") == {"test_reproducible_under_a_seed"}
    assert failed(outcomes, "TestStateless") == {"test_state_round_trips_through_json"}
    assert failed(outcomes, "TestHeavy") == {"test_entry_point_module_imports_no_framework"}
    assert failed(outcomes, "TestEager") == {"test_implementation_loads_lazily"}


CAUGHT_BY = {
    "TestGood": set(),
    "TestUphill": {"test_adaptation_lowers_query_loss[regression]"},
    "TestForgetful": {"test_state_round_trips_through_npz[regression]"},
    "TestNoisy": {"test_deterministic_under_seed[regression]"},
    "TestAliasing": {"test_state_round_trips_through_npz[regression]"},
    "TestFlat": {"test_vectorized_batch_shapes[regression]"},
    "TestOvereager": {"test_rejects_unsupported_problems"},
    "TestLoose": {"test_declared_options_have_working_defaults"},
}


def test_algorithm_checks_catch_each_defect(tmp_path):
    pytest.importorskip("metaplug_torch.algorithms.maml", reason="needs the PyTorch plugin")
    site = tmp_path / "site"
    write_plugin(site, "doubles", ALGORITHM_HOOKS, distribution="metaplug-doubles")
    (site / "doubles_impl.py").write_text(ALGORITHM_IMPL)
    # every check on the correct double; on each broken one, the check for its defect plus one other
    select = " or ".join(
        ["TestGood"]
        + [
            f"({cls} and ({' or '.join(_k(t) for t in caught)} or test_state_uses))"
            for cls, caught in CAUGHT_BY.items()
            if caught
        ]
    )
    outcomes = run_suite(site, ALGORITHM_TESTS, select)
    for cls, caught in CAUGHT_BY.items():
        assert failed(outcomes, cls) == caught, (cls, {k: v for k, v in outcomes.items() if k.startswith(cls)})
    assert sum(k.startswith("TestGood::") and v == "passed" for k, v in outcomes.items()) >= 8


def _k(test_id: str) -> str:
    """A ``-k`` term for one test id (``-k`` cannot take brackets)."""
    return test_id.split("[")[0]


CONV4_HOOKS = """
from metaplug import Component, hookimpl

@hookimpl
def register_algorithms(register):
    register(Component(name="blind", summary="MAML double: adapts to vectors, not to images.",
                       target="conv4_impl:Blind", backends=("torch",), problems=("regression", "classification")))
    register(Component(name="faceless", summary="ProtoNet double: tells no images apart.",
                       target="conv4_impl:Faceless", backends=("torch",), problems=("classification",)))
"""

CONV4_IMPL = """
import numpy as np
from metaplug_torch.algorithms.maml import MAML
from metaplug_torch.algorithms.protonet import ProtoNet


def images(batch):
    return batch.support_x.ndim > 3


class Blind(MAML):  # correct on the mlp; on conv4 the loss after adaptation is the loss before
    def evaluate(self, batch, steps=None):
        return super().evaluate(batch, 0 if images(batch) else steps)


class Faceless(ProtoNet):  # a metric learner that learns nothing on images: every class scores alike
    def evaluate(self, batch, steps=None):
        result = super().evaluate(batch, steps)
        if images(batch):
            ways = int(batch.support_y.max()) + 1
            result["loss"] = np.full_like(result["loss"], np.log(ways))
            result["accuracy"] = np.full_like(result["accuracy"], 1.0 / ways)
        return result
"""

CONV4_TESTS = """
from metaplug.testing import AlgorithmConformance

class TestBlind(AlgorithmConformance):
    algorithm, backend = "blind", "torch"

class TestFaceless(AlgorithmConformance):
    algorithm, backend = "faceless", "torch"

class TestMAML(AlgorithmConformance):
    algorithm, backend = "maml", "torch"
"""

CONV4_CHECK = "test_learns_on_omniglot_shaped_tasks_with_conv4"


def test_conv4_check_fails_algorithms_that_do_nothing_on_images(tmp_path):
    """Both doubles pass every check on the mlp and fail the conv4 one, which MAML passes."""
    pytest.importorskip("metaplug_torch.algorithms.maml", reason="needs the PyTorch plugin")
    site = tmp_path / "site"
    write_plugin(site, "conv4_doubles", CONV4_HOOKS, distribution="metaplug-conv4-doubles")
    (site / "conv4_impl.py").write_text(CONV4_IMPL)
    outcomes = run_suite(site, CONV4_TESTS, f"TestBlind or TestFaceless or (TestMAML and {CONV4_CHECK})")
    assert failed(outcomes, "TestBlind") == {CONV4_CHECK}, outcomes
    assert failed(outcomes, "TestFaceless") == {CONV4_CHECK}, outcomes
    assert outcomes[f"TestMAML::{CONV4_CHECK}"] == "passed"
