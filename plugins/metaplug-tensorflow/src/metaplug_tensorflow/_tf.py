"""The one place that imports TensorFlow, quietly.

TensorFlow's C++ start-up banner (absl's "All log messages before ...", oneDNN's
notice, CPU feature hints) is written straight to file descriptor 2 and ignores
``TF_CPP_MIN_LOG_LEVEL``, which would break metaplug's one-line errors. The
import therefore runs with fd 2 captured; those banner lines are dropped and
anything else is passed on to stderr.
"""

import os
import re
import sys
import tempfile

from metaplug.errors import PluginError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_BANNER = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on"
    r"|cpu_feature_guard|To enable the following instructions|rebuild TensorFlow with the appropriate"
)


def _import_quietly():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines()
                if line.strip() and not _BANNER.search(line)
            ]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return tensorflow


try:
    tf = _import_quietly()
except ImportError as exc:
    raise PluginError(
        "metaplug-tensorflow needs TensorFlow >= 2.16: pip install 'metaplug-tensorflow[cpu]' "
        f"(tensorflow-cpu) or 'metaplug-tensorflow[gpu]' (tensorflow); import failed: {exc}"
    ) from None

__all__ = ["tf"]
