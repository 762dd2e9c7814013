import sys

from idml.cli import main

sys.exit(main())
