"""Install ComfyUI at a pinned commit into its own pinned environment.

One installer for `make run`, the image build and the real-ComfyUI tests:
source -> ComfyUI's tree at exactly the pinned commit -> its own venv -> every package of
comfyui-requirements.lock. A source is a git URL or local git repository (cloned, then checked
out at the commit), a tarball, URL or file, that names its commit in its header as `git
archive` and GitHub's archives do, or a folder this installer made (it names its commit). Each step says what it does, with pip's and git's own lines;
a failing step ends with its tool's last lines and what to do. A stamp per commit and lock makes
a second run a no-op.

Standard library only: the image runs it as a script before the worker's own venv exists.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

HOME = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCK = os.path.join(HOME, "comfyui-requirements.lock")
COMMIT_FILE = ".comfy-worker-commit"  # in ComfyUI's folder: the commit its tree holds
STAMP_FILE = ".comfy-worker-installed"  # in the venv: commit and lock digest it was built for
LOCK_REF_PREFIX = "# comfyui-ref: "
INSTALL_HINT = (
    "set COMFYUI_DIR to an existing ComfyUI checkout, point COMFYUI_SOURCE at a reachable copy, "
    "or run with DRY_RUN=1 to try the worker without it"
)
TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class InstallError(RuntimeError):
    """A step failed; the message carries the tool's last lines and what to do."""


def say(message: str) -> None:
    print(f"[install] {message}", flush=True)


def ensure(source: str, ref: str, comfyui_dir: str, venv_dir: str, lock: str = LOCK) -> str:
    """Make `comfyui_dir` hold ComfyUI at `ref` and `venv_dir` the locked environment; returns
    the venv's python. Does nothing when both are already there for this commit and lock."""
    comfyui_dir, venv_dir = os.path.abspath(comfyui_dir), os.path.abspath(venv_dir)
    python = os.path.join(venv_dir, "bin", "python")
    lock_ref, digest = read_lock(lock)
    if not _same_commit(lock_ref, ref):
        raise InstallError(
            f"{lock} was made for ComfyUI {lock_ref}, not {ref}; "
            f"regenerate it with `make comfyui-lock COMFYUI_REF={ref}` and test it"
        )
    commit = tree_commit(comfyui_dir)
    stamp = os.path.join(venv_dir, STAMP_FILE)
    if commit and _same_commit(commit, ref) and _read(stamp) == f"{commit} {digest}":
        say(f"ComfyUI {commit[:12]} and its environment are installed ({comfyui_dir})")
        return python
    if not (commit and _same_commit(commit, ref)):
        say(f"step 1/3: fetching ComfyUI {ref} from {source}")
        commit = fetch(source, ref, comfyui_dir)
    else:
        say(f"step 1/3: ComfyUI {commit[:12]} is already in {comfyui_dir}")
    if not os.path.exists(python):
        say(f"step 2/3: creating ComfyUI's virtual environment in {venv_dir}")
        _run([sys.executable, "-m", "venv", venv_dir], "creating the virtual environment")
    else:
        say(f"step 2/3: ComfyUI's virtual environment is in {venv_dir}")
    say(f"step 3/3: installing ComfyUI's packages from {lock} (torch alone is several GB)")
    _run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", "-r", lock],
        "installing ComfyUI's packages",
    )
    with open(stamp, "w", encoding="utf-8") as handle:
        handle.write(f"{commit} {digest}")
    say(f"ComfyUI {commit[:12]} installed in {comfyui_dir} with {python}")
    return python


def read_lock(lock: str) -> tuple[str, str]:
    """(the ComfyUI commit the lock was made for, the lock's digest)."""
    try:
        with open(lock, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InstallError(f"cannot read ComfyUI's lock {lock}: {exc.strerror}") from None
    for line in data.decode("utf-8").splitlines():
        if line.startswith(LOCK_REF_PREFIX):
            return line[len(LOCK_REF_PREFIX) :].strip(), hashlib.sha256(data).hexdigest()
    raise InstallError(f"{lock} names no ComfyUI commit ('{LOCK_REF_PREFIX}<hash>' line)")


def tree_commit(comfyui_dir: str) -> str | None:
    return _read(os.path.join(comfyui_dir, COMMIT_FILE)) or None


def fetch(source: str, ref: str, comfyui_dir: str) -> str:
    """Put ComfyUI's tree at `ref` into `comfyui_dir`, whole or not at all; returns the commit."""
    parent = os.path.dirname(os.path.abspath(comfyui_dir))
    os.makedirs(parent, exist_ok=True)
    part = tempfile.mkdtemp(prefix=".comfyui-", dir=parent)
    try:
        tree = os.path.join(part, "tree")
        if source.endswith(TARBALL_SUFFIXES):
            commit = _fetch_tarball(source, ref, tree)
        elif os.path.isdir(source) and tree_commit(source):
            commit = _copy_tree(source, ref, tree)
        else:
            commit = _fetch_git(source, ref, tree)
        with open(os.path.join(tree, COMMIT_FILE), "w", encoding="utf-8") as handle:
            handle.write(commit)
        if os.path.isdir(comfyui_dir):
            shutil.rmtree(comfyui_dir)
        os.replace(tree, comfyui_dir)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return commit


def _copy_tree(source: str, ref: str, tree: str) -> str:
    """A folder this installer made (it names its commit), such as another checkout's."""
    commit = tree_commit(source) or ""
    if not _same_commit(commit, ref):
        raise InstallError(f"{source} holds ComfyUI {commit}, not the pinned {ref}")
    say(f"copying ComfyUI {commit[:12]} from {source}")
    shutil.copytree(source, tree, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "user"))
    return commit


def _fetch_git(source: str, ref: str, tree: str) -> str:
    _run(["git", "clone", "--progress", "--no-checkout", source, tree], f"fetching ComfyUI from {source}")
    _run(["git", "-C", tree, "checkout", "--quiet", "--detach", ref], f"checking out ComfyUI {ref}")
    head = subprocess.run(
        ["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not _same_commit(head, ref):
        raise InstallError(
            f"{source} gave commit {head} for {ref}, which is not that commit; use a commit hash"
        )
    shutil.rmtree(os.path.join(tree, ".git"))
    return head


def _fetch_tarball(source: str, ref: str, tree: str) -> str:
    path = source
    if source.startswith(("http://", "https://")):
        path = tree + ".tar"
        _download(source, path)
    try:
        with tarfile.open(path) as archive:
            commit = archive.pax_headers.get("comment", "").strip()
            if not commit:
                raise InstallError(
                    f"{source} does not say which commit it holds (no commit id in its header, "
                    "as `git archive` and GitHub's archives write); use such a tarball or a git source"
                )
            if not _same_commit(commit, ref):
                raise InstallError(f"{source} holds ComfyUI {commit}, not the pinned {ref}")
            say(f"unpacking {os.path.basename(source)} (commit {commit[:12]})")
            os.makedirs(tree)
            members = archive.getmembers()
            top = {m.name.split("/", 1)[0] for m in members}
            strip = len(top) == 1 and not any(m.name == next(iter(top)) and not m.isdir() for m in members)
            for member in members:
                if strip:  # the archive's top folder, ComfyUI-<commit>/
                    member.name = member.name.split("/", 1)[1] if "/" in member.name else ""
                if member.name:
                    extract(archive, member, tree)
    except (OSError, tarfile.TarError) as exc:
        raise InstallError(f"cannot read ComfyUI's tarball {source}: {exc}; {INSTALL_HINT}") from None
    return commit


def extract(archive: tarfile.TarFile, member: tarfile.TarInfo, folder: str) -> None:
    """Extract one member, refusing what would land outside `folder` (Python's "data" filter;
    the image's Python 3.11.2 predates it, so the same checks are made by hand there)."""
    if hasattr(tarfile, "data_filter"):
        archive.extract(member, folder, filter="data")
        return
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, member.name))
    places = [target]
    if member.issym():
        places.append(os.path.realpath(os.path.join(os.path.dirname(target), member.linkname)))
    elif member.islnk():
        places.append(os.path.realpath(os.path.join(root, member.linkname)))
    if member.isdev() or any(os.path.commonpath([root, place]) != root for place in places):
        raise InstallError(f"the tarball holds {member.name!r}, which would land outside {folder}")
    archive.extract(member, folder)


def _download(url: str, path: str) -> None:
    import urllib.request  # here: the entrypoint, PID 1 for the container's life, imports this module

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, shown = 0, 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if done - shown >= 16 << 20:
                    shown = done
                    say(f"  {done >> 20} MiB" + (f" of {total >> 20} MiB" if total else ""))
    except OSError as exc:
        raise InstallError(f"could not fetch ComfyUI from {url} ({exc}); {INSTALL_HINT}") from None


def _same_commit(a: str, b: str) -> bool:
    """A short hash names the commit whose full hash it starts."""
    a, b = a.strip().lower(), b.strip().lower()
    return bool(a and b) and (a.startswith(b) or b.startswith(a))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _run(command: list[str], step: str) -> None:
    """Run a step with its output shown as it comes; on failure raise with its last lines."""
    last: collections.deque[str] = collections.deque(maxlen=12)
    try:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as exc:
        raise InstallError(f"{step} failed: {command[0]}: {exc.strerror}; {INSTALL_HINT}") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line.startswith("WARNING: Location ") and "is ignored" in line:
            continue  # this machine's pip configuration names index folders that do not exist
        last.append(line)
        print(f"  | {line}", flush=True)
    if proc.wait() != 0:
        tail = "\n".join(f"  | {line}" for line in last) or "  | (no output)"
        raise InstallError(f"{step} failed (exit {proc.returncode}); its last lines:\n{tail}\n{INSTALL_HINT}")


def make_lock(source: str, ref: str, lock: str, pins: list[str], skip: list[str]) -> None:
    """Resolve ComfyUI's requirements at `ref` in a scratch venv and write them as the lock.

    `pins` fix what its requirements leave open (the torch/torchvision pair known to work);
    `skip` drops requirements that cannot be met beside them (torchaudio has no release for
    every torch). `requests` is added: ComfyUI imports it without listing it."""
    with tempfile.TemporaryDirectory(prefix="comfyui-lock-") as scratch:
        tree = os.path.join(scratch, "ComfyUI")
        say(f"fetching ComfyUI {ref} from {source}")
        commit = fetch(source, ref, tree)
        wanted = [*pins, "requests"]
        with open(os.path.join(tree, "requirements.txt"), encoding="utf-8") as handle:
            for line in handle:
                requirement = line.split("#", 1)[0].strip()
                name = requirement.split(";")[0]
                for mark in "<>=!~[ ":
                    name = name.split(mark)[0]
                if requirement and name.lower() not in skip and not any(p.startswith(name) for p in pins):
                    wanted.append(requirement)
        venv = os.path.join(scratch, "venv")
        python = os.path.join(venv, "bin", "python")
        _run([sys.executable, "-m", "venv", venv], "creating a scratch environment")
        say(f"resolving {len(wanted)} requirements")
        _run([python, "-m", "pip", "install", "--disable-pip-version-check", *wanted], "resolving")
        frozen = subprocess.run(
            [python, "-m", "pip", "freeze", "--all", "--exclude", "pip", "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    header = [
        f"# ComfyUI's own environment, resolved from its requirements.txt at commit {commit}",
        f"# with {' '.join(pins)}, plus requests (imported, not listed)"
        + (f", without {', '.join(skip)}" if skip else "")
        + ".",
        "# Installed with `pip install -r` by services/comfy/install.py (make run, the image, the tests).",
        "# Regenerate when COMFYUI_REF moves: make comfyui-lock COMFYUI_REF=<commit>, then make test-real.",
        f"{LOCK_REF_PREFIX}{commit}",
    ]
    with open(lock, "w", encoding="utf-8") as handle:
        handle.write("\n".join(header) + "\n" + frozen)
    say(f"wrote {lock} ({len(frozen.splitlines())} packages)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="install ComfyUI and its environment")
    lock = commands.add_parser("lock", help="regenerate the lock for a commit")
    for sub in (install, lock):
        sub.add_argument("--source", required=True, help="git URL or repository, or tarball URL or file")
        sub.add_argument("--ref", required=True, help="the commit hash (never a branch)")
        sub.add_argument("--lock", default=LOCK)
    install.add_argument("--comfyui-dir", required=True)
    install.add_argument("--venv", required=True)
    lock.add_argument("--pin", action="append", default=[], help="a requirement to fix, e.g. torch==2.14.1")
    lock.add_argument("--skip", action="append", default=[], help="a requirement to leave out")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            ensure(args.source, args.ref, args.comfyui_dir, args.venv, args.lock)
        else:
            make_lock(args.source, args.ref, args.lock, args.pin, [s.lower() for s in args.skip])
    except InstallError as exc:
        print(f"[install] comfy_init_failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
