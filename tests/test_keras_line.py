import os
import subprocess
import sys


def run(code, env_value=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    if env_value is not None:
        env["TF_USE_LEGACY_KERAS"] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_selects_tf_keras_without_the_variable():
    proc = run("import reloop2_tf, tensorflow as tf; print(tf.keras.__name__)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith("tf_keras")


def test_keras3_already_loaded_fails_with_actionable_message():
    proc = run("import tensorflow as tf; tf.keras.layers; import reloop2_tf", env_value="0")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "TF_USE_LEGACY_KERAS=1" in proc.stderr
