"""ssh into the qemu guest: Debian's dropbear in the guest, qemu's user
networking forwarding a host loopback port to its port 22.

rig.py uses it when a run asks for ssh (``rig.run(..., ssh=rigssh.Ssh(...))``,
``run --ssh-port PORT``): the guest gets a virtio-net device on qemu's user
network (10.0.2.15, gateway 10.0.2.2), ``root``'s authorized_keys and a
marker that makes stage 2 (guest/rig-init) bring up eth0 and start dropbear
before the scenario.  Without it the guest has no network, as before.

On the host: :func:`ensure_key` makes a client key with ``ssh-keygen`` (a
test makes one per run; ``run`` keeps one in cache/ssh/, never committed),
:func:`free_port` picks a loopback port, :func:`ssh_argv` builds the system
``ssh`` command line for the guest (its host key is new at every boot: no
known_hosts), and :func:`wait_ready` polls until dropbear answers.
"""

import dataclasses
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Sequence

# The guest's kernel modules for the network card (virtio_net pulls in
# net_failover and failover: rig._module_order follows .modinfo).
MODULES = ["virtio_net"]
GUEST_PORT = 22
USER = "root"
# Client options for a guest whose host key is generated at every boot.
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
               "-o", "ConnectTimeout=20"]


class SshError(Exception):
    """No ssh-keygen on the host, or the guest's dropbear never answered."""


@dataclasses.dataclass
class Ssh:
    """What a run needs for ssh: the host loopback port qemu forwards to the
    guest's port 22, and the OpenSSH public key line(s) for root's
    authorized_keys."""
    port: int
    authorized_keys: bytes


def free_port() -> int:
    """Return: a TCP port on 127.0.0.1 that nothing listens on now (qemu
    binds it moments later; another process could take it in between)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_key(path: Path) -> Path:
    """Make an ed25519 key pair at ``path`` and ``path``.pub with ssh-keygen
    unless the pair is there.  Returns: ``path`` (the private key).
    Raises: SshError without ssh-keygen or when it fails."""
    path = Path(path)
    if path.is_file() and path.with_suffix(".pub").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "memagent-rig",
                        "-f", str(path)], check=True, capture_output=True)
    except FileNotFoundError as e:
        raise SshError("no ssh-keygen on the host (apt-get install -y openssh-client)") from e
    except subprocess.CalledProcessError as e:
        raise SshError("ssh-keygen failed: %s" % e.stderr.decode(errors="replace")) from e
    return path


def spec(port: int, key: Path) -> Ssh:
    """Return: the Ssh of a run on ``port`` authorizing ``key``'s public half
    (``key``.pub).  Raises: OSError if it cannot be read."""
    return Ssh(port, Path(key).with_suffix(".pub").read_bytes())


def qemu_args(port: int) -> List[str]:
    """Return: qemu's arguments for the guest's network card on the user
    network with 127.0.0.1:``port`` forwarded to the guest's port 22."""
    return ["-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:%d-:%d" % (port, GUEST_PORT),
            "-device", "virtio-net-device,netdev=n0"]


def ssh_argv(port: int, key: Path, command: Sequence[str] = ()) -> List[str]:
    """Return: the system ssh's command line running ``command`` in the guest
    as root (no command: a shell)."""
    return (["ssh", "-p", str(port), "-i", str(key)] + SSH_OPTIONS
            + ["%s@127.0.0.1" % USER] + list(command))


def wait_ready(port: int, key: Path, timeout_s: float, alive: Optional[object] = None,
               console: Optional[Path] = None) -> float:
    """Wait until the guest answers ``ssh ... true``.  ``alive``: an object
    with ``poll()`` (a Popen), whose end stops the wait; ``console``: the
    run's console.log, whose RIG-SSH line is awaited before the first login
    (qemu's port accepts connections at once, and a login tried before the
    guest's eth0 is up waits out TCP's retransmissions: 12-19 s measured).
    Returns: the seconds waited.  Raises: SshError after ``timeout_s`` or
    when ``alive`` ended."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout_s:
        if alive is not None and alive.poll() is not None:  # type: ignore[attr-defined]
            raise SshError("the guest run ended before ssh answered (%s)" % last)
        if console is not None and not _said_up(console):
            time.sleep(0.1)
            continue
        proc = subprocess.run(ssh_argv(port, key, ["true"]), capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        if proc.returncode == 0:
            return time.monotonic() - t0
        last = (proc.stderr.strip() or "exit %d" % proc.returncode)[-200:]
        time.sleep(0.5)
    raise SshError("no ssh answer on 127.0.0.1:%d within %.0f s (%s)" % (port, timeout_s, last))


def _said_up(console: Path) -> bool:
    """Return: True once the console log has stage 2's RIG-SSH line."""
    try:
        return b"\nRIG-SSH " in Path(console).read_bytes()
    except OSError:
        return False


def default_key(cache: Path) -> Path:
    """Return: the rig's own client key, cache/ssh/id_ed25519, made on first
    use (git-ignored with the rest of cache/).  Raises: SshError."""
    return ensure_key(Path(cache) / "ssh" / "id_ed25519")


def guest_files(ssh: Ssh) -> List[tuple]:
    """Return: [(path in the payload, bytes, mode)] a run with ssh adds:
    root's authorized_keys and the marker /rig/ssh that stage 2 reads (the
    host port, for the console's RIG-SSH line)."""
    return [("payload/root/.ssh/authorized_keys", ssh.authorized_keys, 0o600),
            ("payload/rig/ssh", ("%d\n" % ssh.port).encode(), 0o644)]
