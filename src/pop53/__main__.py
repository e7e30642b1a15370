import sys

from pop53.cli import main

sys.exit(main())
