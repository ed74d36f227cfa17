"""The metaplug entry point of metaplug-matchingnet: registers the algorithm 'matchingnet'.

Discovery imports this module in every ``metaplug`` process, so it must stay light:
no ``import torch`` here. ``target`` names the class; the host imports it only when
the algorithm is used.
"""

from metaplug import Component, Register, hookimpl


@hookimpl
def register_algorithms(register: Register) -> None:
    """Register 'matchingnet' for the torch backend: the host calls this once, during discovery."""
    register(
        Component(
            name="matchingnet",
            summary="Matching Networks: cosine attention over support embeddings (Vinyals et al. 2016).",
            target="metaplug_matchingnet.algorithm:MatchingNetworks",
            backends=("torch",),
            problems=("classification",),
        )
    )
