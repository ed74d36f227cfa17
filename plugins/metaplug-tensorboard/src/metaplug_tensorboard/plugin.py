"""The metaplug entry point of metaplug-tensorboard: registers the observer 'tensorboard'.

Discovery imports this module in every ``metaplug`` process: it imports no tensorboardX;
``target`` names the class, imported only by runs that log to TensorBoard.
"""

from metaplug import Component, Register, hookimpl


@hookimpl
def register_observers(register: Register) -> None:
    """Register 'tensorboard' (``metaplug train --log tensorboard``)."""
    register(
        Component(
            name="tensorboard",
            summary="TensorBoard event files in RUN_DIR/tensorboard: metrics, config, hparams (tensorboard --logdir).",
            target="metaplug_tensorboard.observer:TensorBoardObserver",
        )
    )
