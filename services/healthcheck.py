"""`python -m services.healthcheck` as before the packages: the same as `python -m services.container.healthcheck`."""

import sys

from services.container.healthcheck import main

if __name__ == "__main__":
    sys.exit(main())
