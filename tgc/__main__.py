import sys

from tgc.cli import main

sys.exit(main())
