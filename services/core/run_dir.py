"""RUN_DIR's layout: every file and folder the worker's processes share there, named once.

    RUN_DIR/                  0700 (0711 when ComfyUI has its own user)
      supervisor.sock         supervisord's control socket
      supervisord.pid
      instances.conf          programs comfy-1 .. comfy-N-1, written by the entrypoint
      fatal                   the watchdog ended the container: the program, then its boot tail
      draining                the worker drains (services.core.drain): since when, until when
      work/                   work accepted and not handed over, a file each (services.core.in_hand)
      <program>-starts        how often instance <program> (comfy, comfy-1, ...) was started
      <program>-broken        why that instance is out for good (its GPU kept failing); removed
                              when the program starts again
      <program>-nodes/        the worker's own ComfyUI nodes (the pre-flight's), a custom_nodes
                              path that ComfyUI's user reads and cannot change
      <program>/              that ComfyUI's own folder, owned by ComfyUI's user
        input/ output/ temp/ user/ home/
        extra_model_paths.yaml
        relay.py              the relay's copy that ComfyUI's user runs
        boot.log              the last lines of a boot that died before ComfyUI answered
        ready                 the pid of the program whose ComfyUI has booted (the relay writes it)

Standard library only: PID 1 and the launcher read it too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

IO_FOLDERS = ("input", "output", "temp")


@dataclass(frozen=True)
class RunDir:
    path: str

    @property
    def supervisor_socket(self) -> str:
        return os.path.join(self.path, "supervisor.sock")

    @property
    def supervisord_pid(self) -> str:
        return os.path.join(self.path, "supervisord.pid")

    @property
    def instance_programs(self) -> str:
        """Included by conf/supervisord.conf."""
        return os.path.join(self.path, "instances.conf")

    @property
    def fatal_marker(self) -> str:
        return os.path.join(self.path, "fatal")

    @property
    def drain_file(self) -> str:
        return os.path.join(self.path, "draining")

    @property
    def work_dir(self) -> str:
        return os.path.join(self.path, "work")

    def starts_file(self, program: str) -> str:
        return os.path.join(self.path, f"{program}-starts")

    def broken_marker(self, program: str) -> str:
        return os.path.join(self.path, f"{program}-broken")

    def comfy_dir(self, program: str) -> str:
        return os.path.join(self.path, program)

    def io(self, program: str, kind: str) -> str:
        """ComfyUI's input, output, temp, user or home folder."""
        return os.path.join(self.comfy_dir(program), kind)

    def model_paths(self, program: str) -> str:
        return os.path.join(self.comfy_dir(program), "extra_model_paths.yaml")

    def relay(self, program: str) -> str:
        return os.path.join(self.comfy_dir(program), "relay.py")

    def nodes(self, program: str) -> str:
        return os.path.join(self.path, f"{program}-nodes")

    def boot_tail(self, program: str) -> str:
        return os.path.join(self.comfy_dir(program), "boot.log")

    def ready_file(self, program: str) -> str:
        return os.path.join(self.comfy_dir(program), "ready")
