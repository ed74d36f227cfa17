"""Reading pickled numpy arrays without running pickled code.

Some mini- and tiered-ImageNet caches exist only as Python pickles. A pickle can
call any importable function while it loads, so these are read only after an
explicit opt-in (``allow_pickle = true``), and then with an unpickler that rebuilds
numpy arrays, numpy scalars and plain containers (dict, list, tuple, str, bytes,
numbers) and refuses every other global.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from metaplug.errors import DatasetError

ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
    }
)
"""``(module, name)`` pairs a pickle may name: what rebuilding a numpy array takes."""


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array")
        return super().find_class(module, name)


def load_arrays(path: Path) -> Any:
    """The object pickled in ``path``, if it is made only of numpy arrays and plain containers.

    Python 2 pickles (Ren et al.'s tiered-ImageNet files) load with ``latin1`` strings,
    as numpy documents for arrays pickled by Python 2.
    """
    try:
        with open(path, "rb") as handle:
            return _ArraysOnly(handle, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"refusing to unpickle {path}: {exc}; only numpy arrays and containers are read") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as exc:
        raise DatasetError(f"{path} is not a readable pickle of numpy arrays ({exc}); replace it") from exc
