"""metaplug's conformance suite (metaplug.testing), run on every component of this plugin:
the same checks a third-party plugin's tests inherit."""

from metaplug.testing import AlgorithmConformance, BackendConformance, OptimizerConformance

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
