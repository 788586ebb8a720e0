"""``python -m memcim`` runs the command line."""
import sys

from memcim.cli import main

if __name__ == "__main__":
    sys.exit(main())
