"""supervisord under LOG_FORMAT=json. It is `silent` there, but its HTTP server still prints
some errors straight to stderr (`error: uncaptured python exception, closing channel ...` when
a client goes away mid-answer); run this way, whatever supervisord prints itself becomes lines
of the worker's schema. Its programs write to the file descriptors they inherit, untouched.

Usage: python -m services.container.supervisord_json -c CONF (supervisord's own arguments)
"""

from __future__ import annotations

from supervisor import supervisord

from services.core import logs


def main() -> None:
    logs.setup("supervisord", "json")
    supervisord.main()


if __name__ == "__main__":
    main()
