import sys

from smoothinf.cli import main

sys.exit(main())
