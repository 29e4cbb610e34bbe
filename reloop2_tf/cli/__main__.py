"""``python -m reloop2_tf.cli``: the ``reloop2`` command line."""

import sys

from reloop2_tf.cli.main import main

sys.exit(main())
