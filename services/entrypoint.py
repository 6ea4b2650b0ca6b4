"""`python -m services.entrypoint` as before the packages: the same as `python -m services.container.entrypoint`."""

import sys

from services.container.entrypoint import main

if __name__ == "__main__":
    sys.exit(main())
