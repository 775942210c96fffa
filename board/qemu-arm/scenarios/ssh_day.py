"""The handset day, then the guest stays up until the host is done with it over
ssh: for tests/test_guest_status.py, which asks ``memagent status --ssh`` during
the day and ``memagent plot --ssh`` after it, while the agent still runs.

    board/qemu-arm/run --board qemu-arm --ssh-port 0 \
        board/qemu-arm/scenarios/ssh_day.py memagent [runs=N] [wait=S]

Runs ``handset_day.py CONTESTANT [runs=N]`` (its FACT and RESULT lines, its
files), then waits up to ``wait`` seconds (default 180) for the host to
``touch /tmp/rig-ssh-done``, with ssh_login.py's FACT lines on dropbear and
the commands run over ssh meanwhile (the polls during the day are not
sampled: that would load the guest).  RESULT fails if the host never said
it was done.
"""

import sys

import handset_day
import rigguest
import ssh_login


def main(argv):
    """``CONTESTANT [runs=N] [wait=S]``.  Returns: 0 (the verdict is the RESULT lines)."""
    wait = [a for a in argv if a.startswith("wait=")]
    wait_s = float(wait[-1].partition("=")[2]) if wait else 180.0
    handset_day.guest_main([a for a in argv if not a.startswith("wait=")])
    print("ssh_day: the day is over; waiting up to %.0f s for the host" % wait_s, flush=True)
    figures = ssh_login.watch(ssh_login.listener_pid(), wait_s)
    ssh_login.print_watch(figures)
    if not figures["done"]:
        rigguest.result(False, "the host did not touch %s within %.0f s"
                        % (ssh_login.DONE, wait_s))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
