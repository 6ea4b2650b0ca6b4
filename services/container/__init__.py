"""The container's life: what runs before, around and beside the programs.

    entrypoint (checks the settings, ComfyUI's user, ports, Redis) -> exec supervise (PID 1) ->
    supervisord -> comfy, api | handler (+ localqueue), watchdog

Guarantees: a bad setting stops the start with one line naming it; signals reach supervisord and
orphans are reaped; a hung ComfyUI is restarted; a program that keeps failing ends the container
with exit 1 and its last words; `supervise` is standard library only.
"""
