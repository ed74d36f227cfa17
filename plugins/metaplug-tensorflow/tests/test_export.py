"""Adapted models exported as SavedModels serve the same predictions with plain TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

SERVE = """
import json, sys
import numpy as np
import tensorflow as tf
out = {}
for name, path, inputs in json.loads(sys.argv[1]):
    served = tf.saved_model.load(path)
    x = np.load(inputs)
    direct = served.serve(tf.constant(x)).get("outputs").numpy()
    signature = served.signatures["serving_default"](x=tf.constant(x))["outputs"].numpy()
    assert np.array_equal(direct, signature)
    np.save(path + "/served.npy", direct)
    out[name] = direct.shape
print(json.dumps({"shapes": out, "metaplug_imported": any(m.startswith("metaplug") for m in sys.modules)}))
"""


def test_saved_models_serve_without_metaplug(make, sinusoid_batches, image_batches, tmp_path):
    jobs, expected = [], {}
    for name, (spec, batches) in [("maml", sinusoid_batches), ("protonet", image_batches), ("anil", image_batches)]:
        algorithm = make(name, spec, dtype="float32")
        batch = batches[3]
        adapted = algorithm.adapt(batch.support_x[0], batch.support_y[0])
        path = adapted.export(tmp_path / name)
        np.save(tmp_path / f"{name}.npy", batch.query_x[0])
        expected[name] = adapted.predict(batch.query_x[0])
        jobs.append((name, str(path), str(tmp_path / f"{name}.npy")))
    result = subprocess.run([sys.executable, "-c", SERVE, json.dumps(jobs)], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["metaplug_imported"] is False
    for name, path, _ in jobs:
        served = np.load(f"{path}/served.npy")
        np.testing.assert_allclose(served, expected[name], rtol=1e-5, atol=1e-6)
