"""The contract between the host and its plugins, and what both sides share.

- :mod:`~metaplug.contract.hookspecs`: the hooks a plugin implements.
- :mod:`~metaplug.contract.records`: :class:`~metaplug.contract.records.Component`, the
  light record a hook registers.
- :mod:`~metaplug.contract.interfaces`: what component implementations satisfy
  (``Backend``, ``Algorithm``, ``TaskSampler``, ``InnerRule``...) and the data that
  crosses the boundary (``TaskSpec``, ``EpisodeBatch``, ``ModelSpec``).
- :mod:`~metaplug.contract.observers`: run observers (``RunObserver``, ``RunStart``), the
  loggers that follow training.
- :mod:`~metaplug.contract.options`: declared options (``Options``, ``option``).
- :mod:`~metaplug.contract.hyperparameters`: the standard algorithms' and optimizers' options.
- :mod:`~metaplug.contract.schedules`: the outer optimizers' learning-rate schedules.
- :mod:`~metaplug.contract.minibatches`: supervised-reptile's mini-batch draws.
- :mod:`~metaplug.contract.calibration`: ``batching = "auto"`` chosen by measuring, cached per machine.

Everything here is framework-free (numpy at most).
"""
