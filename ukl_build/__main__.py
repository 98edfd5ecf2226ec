import sys

from ukl_build.cli import main

sys.exit(main())
