"""Plugin machinery: discovery of entry points (:mod:`~metaplug.plugins.discovery`), the
registry of components (:mod:`~metaplug.plugins.registry`) and the host's own components
(:mod:`~metaplug.plugins.builtin`). Plugins never import this package."""
