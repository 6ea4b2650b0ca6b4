"""Print a new worker key pair (the private key for WORKER_PRIVATE_KEY_B64, the public for
clients) and a webhook signing secret for WEBHOOK_SECRET."""

from __future__ import annotations

import base64
import os
import sys

from services.jobs import envelope


def main() -> int:
    private, public = envelope.keypair()
    print(f"WORKER_PRIVATE_KEY_B64={private}")
    print(f"SERVER_PUBLIC_KEY_B64={public}")
    print(f"KEY_ID={envelope.kid_of(base64.b64decode(public))}")
    print(f"WEBHOOK_SECRET=whsec_{base64.b64encode(os.urandom(32)).decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
