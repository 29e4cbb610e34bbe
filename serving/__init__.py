"""The TF Serving side of ReLoop2, installed as ``reloop2_serving`` (the repository's ``serving/``).

``client`` (gRPC client, fan-out to replicas), ``dev_server`` (a PredictionService-compatible
development server) with its ``flags`` and ``process`` (the server in a child process),
``replay`` (stream a log through predict, then update_memory) and ``cli`` (``reloop2 serve`` and
``reloop2 replay``); beside them, configs for the real ``tensorflow_model_server``.
"""
