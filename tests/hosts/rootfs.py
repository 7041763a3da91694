"""A Debian rootfs for test hosts, built once with debootstrap and cached.

    python -m tests.hosts.rootfs        # build if missing, print the path

The cache key is the package list, so adding a package builds a fresh one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("TESTHOST_MIRROR", "http://deb.debian.org/debian")
PACKAGES = sorted(
    [
        # What the Ansible roles install, present already so that a test run does not wait for
        # downloads; the roles still declare every package (then apt finds nothing to do).
        "acl",
        # Disk quotas: btrfs quota groups (tests/provisioning/test_quota.py, the role).
        "btrfs-progs",
        "cron",
        "nginx",
        "python3-aiosmtpd",
        "python3-cryptography",
        # debootstrap does not resolve virtual packages: python3-cryptography's
        # python3-cffi-backend-api-* are provided by this one.
        "python3-cffi-backend",
        "python3-psycopg2",
        "postfix",
        "postgresql",
        "python3-apt",
        "python3-venv",
        "quota",
        "redis-server",
        # The panel role's firewall for the FastAGI ports (a table of its own).
        "nftables",
        # The asterisk_node role's source build (asterisk_node_build_packages): the test
        # builds Asterisk for real in a test host.
        "autoconf",
        "build-essential",
        "bzip2",
        "libcurl4-openssl-dev",
        "libedit-dev",
        "libjansson-dev",
        "libncurses-dev",
        "libopus-dev",
        "libspeexdsp-dev",
        "libsqlite3-dev",
        "libsrtp2-dev",
        "libssl-dev",
        "libxml2-dev",
        "patch",
        "pkg-config",
        "uuid-dev",
        "wget",
        "ca-certificates",
        "curl",
        "iproute2",
        "lego",
        "mariadb-server",
        "nginx-light",
        "openssh-server",
        "openssh-sftp-server",
        "openssl",
        "passwd",
        "pebble",
        "php8.2-fpm",
        "procps",
        "python3",
        "sudo",
    ]
)


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "commune-panel"


def rootfs_path() -> Path:
    key = hashlib.sha256(f"{SUITE}|{MIRROR}|{','.join(PACKAGES)}".encode()).hexdigest()[:12]
    return cache_root() / f"rootfs-{SUITE}-{key}"


def _remove_leftover(building: Path) -> None:
    """Remove what an interrupted build left, unmounting first what debootstrap mounted in it.

    A killed debootstrap leaves the machine's /proc mounted inside; deleting through that
    mount would reach into the live system, so the tree goes only once nothing is mounted.
    """
    inside = str(building) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(inside)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=True)
    shutil.rmtree(building, ignore_errors=True)


def ensure_rootfs() -> Path:
    """The cached rootfs; built (about a minute) when missing. Needs root and debootstrap."""
    target = rootfs_path()
    if (target / ".complete").exists():
        return target
    if os.geteuid() != 0:
        raise RuntimeError(
            "building the test host rootfs needs root (bin/test runs as root or with sudo)"
        )
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is missing (bin/test installs it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (bin/test and a test session may both get here): the others wait
    # for it and take its result.
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        building = target.with_name(target.name + ".building")
        _remove_leftover(building)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(building),
                MIRROR,
            ],
            # Its progress to stderr: bin/test reads the rootfs' path from stdout.
            stdout=sys.stderr,
            check=True,
        )
        # A node's SSH host keys are its own: none may come from the shared image.
        for host_key in (building / "etc" / "ssh").glob("ssh_host_*"):
            host_key.unlink()
        (building / ".complete").write_text(",".join(PACKAGES))
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
    return target


if __name__ == "__main__":
    print(ensure_rootfs())  # noqa: T201  (the path, for bin/test)
    sys.exit(0)
