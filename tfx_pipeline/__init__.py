"""The ReLoop2 TFX pipeline, installed as ``reloop2_tfx`` (the repository's ``tfx_pipeline/``).

TFX template layout: ``pipeline.create_pipeline`` builds it, ``local_runner`` and
``kubeflow_v2_runner`` run or compile it, ``configs`` holds the settings, ``cli`` adds
``reloop2 pipeline run|compile`` (with the flags in ``flags``).

The project runs on tf-keras (Keras 2). ``TF_USE_LEGACY_KERAS`` must be set before anything
touches ``tf.keras``; importing this package sets it, so every process that imports a pipeline
module (the Trainer's ``run_fn`` included) gets it even when its launcher did not.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
