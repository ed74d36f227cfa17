"""metaplug's conformance suite (metaplug.testing), run on every component of this plugin:
the same checks a third-party plugin's tests inherit."""

from typing import Any, ClassVar

import pytest

from metaplug.testing import AlgorithmConformance, BackendConformance, ModelConformance, OptimizerConformance
from metaplug.testing.layouts import conv4_layout, mlp_layout, resnet12_layout

BACKEND = "tensorflow"


class TestBackend(BackendConformance):
    backend = BACKEND


class TestMAML(AlgorithmConformance):
    algorithm, backend = "maml", BACKEND


class TestFOMAML(AlgorithmConformance):
    algorithm, backend = "fomaml", BACKEND


class TestReptile(AlgorithmConformance):
    algorithm, backend = "reptile", BACKEND


class TestANIL(AlgorithmConformance):
    algorithm, backend = "anil", BACKEND


class TestMetaSGD(AlgorithmConformance):
    algorithm, backend = "metasgd", BACKEND


class TestProtoNet(AlgorithmConformance):
    algorithm, backend = "protonet", BACKEND


class TestFineTune(AlgorithmConformance):
    algorithm, backend = "finetune", BACKEND


class TestRelationNet(AlgorithmConformance):
    algorithm, backend = "relationnet", BACKEND
    conv4_meta_steps = 10  # the relation module starts from scratch: 3 steps are too few on some draws


class TestR2D2(AlgorithmConformance):
    algorithm, backend = "r2d2", BACKEND


@pytest.mark.slow  # TensorFlow traces the unrolled meta-LSTM per instance: about a minute per check
class TestMetaLSTM(AlgorithmConformance):
    algorithm, backend = "metalstm", BACKEND
    hyperparameters: ClassVar[dict[str, Any]] = {"inner_steps": 2}  # meta-training unrolls 2 updates (evaluation: 5)


class TestSGD(OptimizerConformance):
    optimizer, backend = "sgd", BACKEND


class TestAdam(OptimizerConformance):
    optimizer, backend = "adam", BACKEND


class TestRMSprop(OptimizerConformance):
    optimizer, backend = "rmsprop", BACKEND


class TestInnerSGD(OptimizerConformance):
    optimizer, backend = "inner-sgd", BACKEND


class TestInnerMetaSGD(OptimizerConformance):
    optimizer, backend = "inner-metasgd", BACKEND


class TestMLPModel(ModelConformance):
    model, backend = "mlp", BACKEND
    options: ClassVar[dict[str, Any]] = {"hidden": (16, 16)}
    problem, input_shape, output_size = "regression", (1,), 1
    layout = mlp_layout(1, 1, (16, 16))


class TestConv4Model(ModelConformance):
    pytestmark = pytest.mark.slow  # a graph per algorithm: about a minute on 2 cores
    model, backend = "conv4", BACKEND
    options: ClassVar[dict[str, Any]] = {"filters": 8}
    layout = conv4_layout(1, 28, 3, filters=8)
    rejected_input_shape = (8,)


class TestResNet12Model(ModelConformance):
    pytestmark = pytest.mark.slow  # a graph per algorithm: about a minute on 2 cores
    model, backend = "resnet12", BACKEND
    options: ClassVar[dict[str, Any]] = {"channels": (4, 8, 8, 16)}
    layout = resnet12_layout(1, 3, (4, 8, 8, 16))
    rejected_input_shape = (1, 8, 8)


class TestResNet12DropBlockModel(ModelConformance):
    pytestmark = pytest.mark.slow  # a graph per algorithm: about a minute on 2 cores
    model, backend = "resnet12", BACKEND
    options: ClassVar[dict[str, Any]] = {
        "channels": (4, 8, 8, 16),
        "drop_rate": 0.1,
        "dropblock_size": 2,
        "dropblock_ramp": 2,
    }
