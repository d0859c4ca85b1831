import sys

from batchforge.cli import main

sys.exit(main())
