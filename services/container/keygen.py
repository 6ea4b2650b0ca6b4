"""Print a new worker key pair (the private key for WORKER_PRIVATE_KEY_B64, the public for
clients) and a webhook signing secret for WEBHOOK_SECRET; with `--api-key NAME`, a new API key
instead: the token for its client and the line to add to API_KEYS_FILE (its hash only)."""

from __future__ import annotations

import argparse
import base64
import os
import sys

from services.core.config import ConfigError
from services.jobs import access, envelopes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keygen", description=__doc__)
    parser.add_argument("--api-key", metavar="NAME", help="make an API key named NAME")
    parser.add_argument(
        "--scopes", default="jobs", help=f"its scopes, comma-separated: {','.join(access.SCOPES)}"
    )
    args = parser.parse_args(argv)
    if args.api_key:
        token = access.new_token()
        line = access.line_for(args.api_key, token, args.scopes)
        try:
            access.parse(line)
        except ConfigError as exc:
            parser.error(str(exc).removeprefix("API_KEYS_FILE line 1: "))
        print(f"# the client's token (shown once; the file keeps only its hash): {token}")
        print(line)
        return 0
    private, public = envelopes.keypair()
    print(f"WORKER_PRIVATE_KEY_B64={private}")
    print(f"SERVER_PUBLIC_KEY_B64={public}")
    print(f"KEY_ID={envelopes.kid_of(base64.b64decode(public))}")
    print(f"WEBHOOK_SECRET=whsec_{base64.b64encode(os.urandom(32)).decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
