import sys

from memcim.cli import main

sys.exit(main())
