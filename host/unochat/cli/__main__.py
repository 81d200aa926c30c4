"""`python -m unochat.cli`: the `unochat` command."""
import sys

from .main import main

sys.exit(main())
