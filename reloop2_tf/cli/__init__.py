"""The applications: the ``reloop2`` command line (``main``) and the end-to-end demo (``demo``).

``python -m reloop2_tf.cli`` is the same as ``reloop2``.
"""
