import sys

from tagcap.pipeline.cli import main

sys.exit(main())
