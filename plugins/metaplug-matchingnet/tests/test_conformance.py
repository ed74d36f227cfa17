"""metaplug's conformance suite for algorithms, run on 'matchingnet' (torch)."""

from metaplug.testing import AlgorithmConformance


class TestMatchingNetworksConformance(AlgorithmConformance):
    algorithm = "matchingnet"
    backend = "torch"
    min_accuracy_gain = 0.3  # metric-based: well-separated classes are matched without training
