import sys

from baas_cli.entry import main

sys.exit(main())
