"""``python -m openrecog`` runs the command line."""

from openrecog.cli.main import main

main()
