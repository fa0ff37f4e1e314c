import sys

from baas_cli.app import main

sys.exit(main())
