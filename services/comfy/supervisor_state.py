"""What supervisord says about our programs, read over its unix control socket."""

from __future__ import annotations

import xmlrpc.client

from supervisor.xmlrpc import SupervisorTransport


def rpc(socket_path: str) -> xmlrpc.client.ServerProxy:
    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def process_state(socket_path: str, name: str) -> str:
    """The program's state name (RUNNING, STARTING, ...), or why it could not be read."""
    try:
        return rpc(socket_path).supervisor.getProcessInfo(name)["statename"]
    except xmlrpc.client.Fault as fault:
        return "UNKNOWN" if "BAD_NAME" not in fault.faultString else "ABSENT"
    except OSError:
        return "NO_SUPERVISOR"


def process_infos(socket_path: str) -> dict[str, dict]:
    """Every program's info by name; empty when supervisord cannot be asked."""
    try:
        return {info["name"]: info for info in rpc(socket_path).supervisor.getAllProcessInfo()}
    except (xmlrpc.client.Fault, OSError):
        return {}
