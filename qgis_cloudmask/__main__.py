"""``python -m qgis_cloudmask``: see :mod:`qgis_cloudmask.cli`."""

import sys

from qgis_cloudmask.cli import main

if __name__ == "__main__":
    sys.exit(main())
