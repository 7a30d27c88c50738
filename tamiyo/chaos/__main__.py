"""``python -m tamiyo.chaos``: see ``tamiyo.chaos.main``."""

import logging
import os
import sys

from tamiyo.chaos import main

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.exit(main())
