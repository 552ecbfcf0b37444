"""``python -m wsgi_deferred.cli``."""

import sys

from . import main

sys.exit(main())
