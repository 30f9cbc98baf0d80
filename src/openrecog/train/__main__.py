"""``python -m openrecog.train CONFIG [key=value ...]`` (also under torchrun)."""

import sys

from openrecog.cli.main import app

sys.exit(app(["train", *sys.argv[1:]]))
