"""End-to-end: slirpd installed by Scripts/install and run by a real systemd as PID 1.

A Debian 12 tree (debootstrap --variant=minbase, plus systemd, libslirp0 and procps for
the units' /bin/kill) is built once into .build-e2e/debian12-systemd in the clone and
kept there for later runs. Each run boots it with `systemd-nspawn -b` on a throwaway
tmpfs overlay (--volatile=overlay: the cached tree is never written), its own network
namespace (--private-network: only loopback) and no registration with a host systemd
(--register=no --keep-unit: the host may have none, as in CI containers). Commands run
inside through nsenter. The clone is bound read-only at /src and Scripts/install runs
from there with the binaries under test (SLIRPD and SLIRPCTL), plus the
Swift runtime libraries they link from the toolchain, copied to /usr/local/lib.

Checked, in order (the tests share one machine, and each sets up what it needs when run
alone):
  - Scripts/install, systemd-sysusers, systemd-tmpfiles as the install prints them: user
    and group slirpd, /run/slirpd and /run/slirpd/guests; the units load;
  - slirpd.socket alone: socket files with the promised owner, group and mode; a
    guest of a user in group slirpd attaches and starts slirpd.service through them
    (a user outside the group is refused), and leases an address; the lease file and
    the control API are where the unit puts them, the socket files unchanged;
  - systemctl reload: same main process, the guest stays attached and is answered;
  - a SIGSTOPped daemon: the watchdog aborts it and systemd restarts it; new guests
    lease through the same sockets;
  - systemctl stop: no process left, socket files removed, runtime and state
    directories kept, as the units promise; started again, it serves;
  - slirpd@lab beside slirpd.service, stopped alone;
  - a group member's datagram guest in /run/slirpd/guests, across systemctl restart.
The watchdog is cut from the unit's 30 s to 5 s by a drop-in, only to wait less.

Traffic: the fake guests only talk to slirpd's DHCP server and DNS address, inside the
container's own network namespace. Needs root, systemd-nspawn (systemd-container) and
debootstrap (Scripts/test installs both). Where nspawn cannot boot, the tests fail and
say why: they never skip.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from daemon import SLIRPCTL, SLIRPD
from fakeguest import FakeGuest, fake_mac

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TREE = REPO / ".build-e2e" / "debian12-systemd"
SUITE = "bookworm"
# procps: the units' ExecReload=/bin/kill; minbase has no kill(1).
PACKAGES = ("systemd", "libslirp0", "procps")
READY = ".slirpd-e2e-tree"  # written last: a tree without it is incomplete
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLONE_NEWNS = 0x00020000
WATCHDOG_SEC = 5
RESTART_SEC = 2  # the unit's RestartSec=
MAC = "52:54:00:5e:01:01"
# slirpd's DNS upstream in the container: its own loopback, where nothing answers (never
# the host's resolver, which debootstrap copies in).
RESOLV_CONF = "nameserver 127.0.0.1\n"


def debian_mirror() -> str:
    """The Debian mirror apt uses here for SUITE (debootstrap installs from it)."""
    apt = Path("/etc/apt")
    files = [apt / "sources.list"] + sorted((apt / "sources.list.d").glob("*"))
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if SUITE in fields.get("Suites", "").split() and "main" in fields.get("Components", "").split():
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE and "main" in words[3:]:
                    return words[1]
    pytest.fail(f"no apt source for Debian {SUITE} main in /etc/apt: debootstrap needs a mirror")


def ensure_tree() -> float:
    """Builds the cached Debian tree if missing; returns the seconds it took (0: cached)."""
    stamp = TREE / READY
    want = " ".join(PACKAGES) + "\n"
    if stamp.is_file() and stamp.read_text() == want:
        return 0.0
    started = time.monotonic()
    partial = TREE.with_name(TREE.name + ".partial")
    shutil.rmtree(TREE, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(partial),
           debian_mirror()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        pytest.fail(f"debootstrap failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    # An empty machine-id, so that systemd makes one per boot.
    (partial / "etc" / "machine-id").write_text("")
    (partial / "etc" / "resolv.conf").write_text(RESOLV_CONF)
    (partial / READY).write_text(want)
    partial.rename(TREE)
    return time.monotonic() - started


def toolchain_libraries(binaries: list[str]) -> list[Path]:
    """The shared libraries the binaries load from outside the system's library
    directories: the Swift runtime of the toolchain that built them."""
    found: dict[str, Path] = {}
    for b in binaries:
        out = subprocess.run(["ldd", b], capture_output=True, text=True, check=True).stdout
        for name, path in re.findall(r"^\s*(\S+) => (/\S+)", out, re.M):
            if not path.startswith(("/lib/", "/lib64/", "/usr/lib/")):
                found[name] = Path(path)
    return sorted(found.values())


def pid_namespace(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


class Machine:
    """A booted systemd-nspawn container and the commands run inside it."""

    def __init__(self, workdir: Path):
        self.name = f"slirpd-e2e-{os.getpid()}"
        self.log_path = workdir / "nspawn.log"
        self.stage = workdir / "stage"
        self.proc: subprocess.Popen | None = None
        self.leader = 0
        self.pidns = ""
        self.nspawn_dir_existed = Path("/run/systemd/nspawn").exists()

    # --- lifecycle ---

    def stage_binaries(self) -> None:
        """slirpd, its config parser slirpd-toml (which it runs from its own directory) and
        slirpctl under test into stage/bin, their toolchain libraries into stage/lib."""
        daemon = Path(SLIRPD).resolve()
        binaries = {"slirpd": daemon, "slirpd-toml": daemon.parent / "slirpd-toml", "slirpctl": Path(SLIRPCTL).resolve()}
        for b in binaries.values():
            if not os.access(b, os.X_OK):
                pytest.fail(f"{b} is missing: build slirpd, slirpd-toml and slirpctl first")
        (self.stage / "bin").mkdir(parents=True)
        (self.stage / "lib").mkdir()
        for name, b in binaries.items():
            shutil.copy2(b, self.stage / "bin" / name)
        for lib in toolchain_libraries([str(b) for b in binaries.values()]):
            shutil.copy2(lib.resolve(), self.stage / "lib" / lib.name)

    def boot(self) -> None:
        cmd = ["systemd-nspawn", "-D", str(TREE), "--volatile=overlay", "-b", "-M", self.name,
               "--register=no", "--keep-unit", "--private-network", "--resolv-conf=off",
               "--console=read-only",
               f"--bind-ro={REPO}:/src", f"--bind-ro={self.stage}:/opt/slirpd-stage"]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.leader:
            if self.proc.poll() is not None:
                pytest.fail(f"systemd-nspawn exited with {self.proc.returncode} before booting:\n{self.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"systemd-nspawn started no container init within 60 s:\n{self.log_text()}")
            for child in self.children(self.proc.pid):
                if pid_namespace(child) not in ("", pid_namespace(os.getpid())):
                    self.leader, self.pidns = child, pid_namespace(child)
            time.sleep(0.2)
        # "offline" until the manager answers on /run/systemd/private; --wait then waits
        # for the boot to end.
        state = ""
        while time.monotonic() < deadline + 120:
            state = self.run("systemctl is-system-running --wait", timeout=150).stdout.strip()
            if state in ("running", "degraded", "maintenance", "stopping"):
                break
            if self.proc.poll() is not None:
                pytest.fail(f"systemd-nspawn exited with {self.proc.returncode} during boot:\n{self.log_text()}")
            time.sleep(0.3)
        if state != "running":
            failed = self.run("systemctl --failed --no-pager; journalctl -b --no-pager | tail -50").stdout
            pytest.fail(f"systemd in the container is '{state}', not running:\n{failed}\n{self.log_text()}")

    @staticmethod
    def children(pid: int) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def shutdown(self) -> list[str]:
        """Powers the container off (SIGTERM to nspawn: an orderly shutdown of PID 1);
        returns what was left behind."""
        problems = []
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                problems.append("systemd-nspawn did not stop within 45 s of SIGTERM; killed")
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.proc:
            self.log.close()
        if self.pidns:
            left = [p for p in os.listdir("/proc") if p.isdigit() and pid_namespace(int(p)) == self.pidns]
            if left:
                problems.append(f"processes of the container left: {left}")
        mounts = Path("/proc/self/mountinfo").read_text()
        for needle in (str(TREE), self.name, str(self.stage)):
            if needle in mounts:
                problems.append(f"mounts left that name {needle}")
        # nspawn's own bookkeeping directories, empty once it has exited.
        if not self.nspawn_dir_existed:
            for d in ("/run/systemd/nspawn/propagate", "/run/systemd/nspawn/locks", "/run/systemd/nspawn"):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        return problems

    # --- inside ---

    def run(self, script: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """`sh -c script` as root inside the container (all its namespaces, its root)."""
        cmd = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w",
               "/usr/bin/env", "-i", PATH, "LANG=C.UTF-8", "SYSTEMD_PAGER=", "/bin/sh", "-c", script]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def check(self, script: str, timeout: float = 60) -> str:
        done = self.run(script, timeout)
        assert done.returncode == 0, f"in the container: {script}\nexit {done.returncode}\n{done.stdout}{done.stderr}"
        return done.stdout

    def show(self, unit: str, prop: str) -> str:
        return self.check(f"systemctl show -P {prop} {unit}").strip()

    def journal(self, unit: str) -> str:
        return self.run(f"journalctl -b --no-pager -o cat -u {unit}").stdout

    def connect_as(self, path: str, uid: int, gid: int, groups: list[int]) -> socket.socket:
        """A stream connection to `path` in the container, made by a process with these
        credentials (so the socket file's owner, group and mode decide); raises OSError
        with the errno connect(2) got."""
        def connect(s: socket.socket) -> None:
            s.connect(path)
        return self.socket_as(socket.SOCK_STREAM, connect, uid, gid, groups)

    def dgram_as(self, path: str, uid: int, gid: int, groups: list[int], umask: int) -> socket.socket:
        """A datagram socket bound to `path` in the container by a process with these
        credentials and umask, as QEMU's -netdev dgram local.path (QEMU sends with sendto()
        and does not connect: slirpd could not answer a socket connected elsewhere)."""
        def bind(s: socket.socket) -> None:
            os.umask(umask)
            s.bind(path)
        return self.socket_as(socket.SOCK_DGRAM, bind, uid, gid, groups)

    def socket_as(self, kind: int, setup, uid: int, gid: int, groups: list[int]) -> socket.socket:
        """A Unix socket set up (bound, connected) by `setup` in a child that entered the
        container's mount namespace and took these credentials, handed back over SCM_RIGHTS."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # child: no Python-level cleanup, just _exit
            status = 1
            try:
                ours.close()
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/proc/{self.leader}/ns/mnt", os.O_RDONLY)
                if libc.setns(fd, CLONE_NEWNS) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
                os.chdir("/")
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
                s = socket.socket(socket.AF_UNIX, kind)
                try:
                    setup(s)
                    socket.send_fds(theirs, [b"ok"], [s.fileno()])
                except OSError as e:
                    theirs.sendall(f"errno {e.errno} {e.strerror}".encode())
                status = 0
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                try:
                    theirs.sendall(f"child {e!r}".encode())
                except OSError:
                    pass
            finally:
                os._exit(status)
        theirs.close()
        try:
            ours.settimeout(30)
            msg, fds, _, _ = socket.recv_fds(ours, 200, 1)
        finally:
            ours.close()
            os.waitpid(pid, 0)
        if fds:
            s = socket.socket(fileno=fds[0])
            s.settimeout(30)
            return s
        text = msg.decode(errors="replace")
        if text.startswith("errno "):
            code = int(text.split()[1])
            raise OSError(code, text)
        raise AssertionError(f"a socket as uid {uid} in the container: {text or 'no answer'}")


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the systemd-as-PID-1 test needs root (systemd-nspawn, nsenter)")
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: Scripts/test installs it (systemd-container, debootstrap)")
    cold = ensure_tree()
    print(f"Debian tree: {'built in %.0f s' % cold if cold else 'cached'} at {TREE}")
    m = Machine(tmp_path_factory.mktemp("systemd"))
    m.stage_binaries()
    started = time.monotonic()
    try:
        m.boot()
        print(f"systemd booted in {time.monotonic() - started:.1f} s")
        yield m
    finally:
        if m.leader:
            print("journal of slirpd's units:\n" + m.run(
                "journalctl -b --no-pager -o short-monotonic -u 'slirpd*'").stdout[-60000:])
        print(f"container log ({m.log_path}):\n{m.log_text() if m.proc else ''}")
        problems = m.shutdown()
        assert not problems, "cleanup: " + "; ".join(problems)


@pytest.fixture(scope="module")
def installed(machine):
    """Scripts/install as its --help says, then what it tells root to do next."""
    machine.check(f"printf '{RESOLV_CONF}' > /etc/resolv.conf")
    out = machine.check(
        "set -e; /src/Scripts/install --from /opt/slirpd-stage/bin;"
        " cp -a /opt/slirpd-stage/lib/. /usr/local/lib/; ldconfig;"
        " systemd-sysusers; systemd-tmpfiles --create slirpd.conf; systemctl daemon-reload", timeout=120)
    assert "/usr/local/lib/systemd/system/slirpd.socket" in out, out
    missing = machine.run("ldd /usr/local/bin/slirpd /usr/local/bin/slirpctl | grep 'not found'").stdout
    assert not missing, f"libraries the installed binaries cannot find in Debian 12:\n{missing}"
    # Wait less for the watchdog test; everything else is the unit as shipped.
    machine.check("mkdir -p /etc/systemd/system/slirpd.service.d && printf '[Service]\\nWatchdogSec=%ds\\n'"
                  " > /etc/systemd/system/slirpd.service.d/watchdog.conf && systemctl daemon-reload" % WATCHDOG_SEC)
    return machine


class Attached:
    """The guest attached through slirpd.socket, shared by the tests that follow."""
    guest: FakeGuest | None = None


def slirpd_ids(m: Machine) -> tuple[int, int]:
    uid, gid = m.check("id -u slirpd; id -g slirpd").split()
    return int(uid), int(gid)


def test_sysusers_creates_user_and_group_and_the_units_load(installed):
    m = installed
    passwd = m.check("getent passwd slirpd").strip().split(":")
    group = m.check("getent group slirpd").strip().split(":")
    assert passwd[0] == "slirpd" and group[0] == "slirpd"
    assert passwd[3] == group[2], f"user slirpd's primary group is not group slirpd: {passwd} {group}"
    assert int(passwd[2]) < 1000, f"slirpd is not a system user: {passwd}"
    assert passwd[6] in ("/usr/sbin/nologin", "/sbin/nologin"), passwd
    for unit in ("slirpd.socket", "slirpd.service", "slirpd@lab.socket", "slirpd@lab.service"):
        assert m.show(unit, "LoadState") == "loaded", m.check(f"systemctl status --no-pager {unit} || true")
    assert m.show("slirpd.service", "ExecMainPID") == "0"


def test_socket_unit_activates_slirpd_for_a_guest_of_group_slirpd(installed):
    m = installed
    m.check("systemctl start slirpd.socket")
    assert m.show("slirpd.socket", "ActiveState") == "active"
    assert m.show("slirpd.service", "ActiveState") == "inactive", "slirpd started before any guest"
    # What slirpd.socket promises: root-owned sockets that group slirpd may use.
    stat = m.check("stat -c '%U %G %a %F' /run/slirpd /run/slirpd/default.sock /run/slirpd/default.dgram")
    assert stat.split("\n")[1:3] == ["root slirpd 660 socket"] * 2, stat
    # From the tmpfiles.d snippet.
    assert stat.split("\n")[0] == "slirpd slirpd 755 directory", stat
    assert m.check("stat -c '%U %G %a' /run/slirpd/guests").strip() == "slirpd slirpd 3770"

    inodes = m.check("stat -c '%i' /run/slirpd/default.sock /run/slirpd/default.dgram").split()

    _, gid = slirpd_ids(m)
    with pytest.raises(PermissionError):
        m.connect_as("/run/slirpd/default.sock", 4242, 4242, [])
    started = time.monotonic()
    sock = m.connect_as("/run/slirpd/default.sock", 4242, 4242, [gid])
    guest = FakeGuest.on_socket(sock, MAC)
    Attached.guest = guest
    address = guest.dhcp_lease(timeout=60)
    print(f"lease {address} through the activated socket {time.monotonic() - started:.1f} s after connecting")
    assert address.startswith("10.0.2."), address
    guest.ping_dns(2, timeout=20)

    assert m.show("slirpd.service", "ActiveState") == "active"
    assert m.show("slirpd.service", "SubState") == "running"
    # (systemd shows the watchdog only while the service runs.)
    assert m.show("slirpd.service", "WatchdogUSec") == f"{WATCHDOG_SEC}s"
    pid = int(m.show("slirpd.service", "MainPID"))
    user = m.check(f"ps -o user=,group= -p {pid}").split()
    assert user == ["slirpd", "slirpd"], f"slirpd runs as {user}"
    # The directories the service's unit creates, and the state slirpd keeps in them.
    assert m.check("stat -c '%U %G %a' /run/slirpd /var/lib/slirpd").split("\n")[:2] == \
        ["slirpd slirpd 755", "slirpd slirpd 700"]
    assert m.check("stat -c '%U %G %a %F' /run/slirpd/control.sock").startswith("slirpd slirpd "), \
        m.check("ls -la /run/slirpd")
    leases = m.check("slirpctl --control /run/slirpd/control.sock leases")
    assert MAC in leases and address in leases, leases
    deadline = time.monotonic() + 20
    while MAC not in m.run("cat /var/lib/slirpd/default.leases").stdout:
        assert time.monotonic() < deadline, "no lease file in /var/lib/slirpd: " + m.check("ls -la /var/lib/slirpd")
        time.sleep(0.5)
    # The socket files are still systemd's (slirpd took the sockets over rather than
    # binding its own), as slirpd.socket made them: RuntimeDirectory= found /run/slirpd as
    # it wants it (tmpfiles.d) and handed nothing in it over to user slirpd.
    assert "slirpd.socket" in m.show("slirpd.service", "TriggeredBy")
    assert m.check("stat -c '%i' /run/slirpd/default.sock /run/slirpd/default.dgram").split() == inodes
    assert m.check("stat -c '%U %G %a' /run/slirpd/default.sock /run/slirpd/default.dgram").split("\n")[:2] \
        == ["root slirpd 660"] * 2


def test_reload_keeps_the_process_and_the_guest(installed):
    m = installed
    guest = Attached.guest
    if guest is None:  # run alone
        m.check("systemctl start slirpd.socket")
        _, gid = slirpd_ids(m)
        guest = FakeGuest.on_socket(m.connect_as("/run/slirpd/default.sock", 4242, 4242, [gid]), MAC)
        Attached.guest = guest
        guest.dhcp_lease(timeout=60)
    pid = m.show("slirpd.service", "MainPID")
    m.check("systemctl reload slirpd.service", timeout=60)
    assert m.show("slirpd.service", "MainPID") == pid
    assert m.show("slirpd.service", "ActiveState") == "active"
    assert m.show("slirpd.service", "NRestarts") == "0"
    assert re.search(r"reload|SIGHUP|re-?read", m.journal("slirpd.service"), re.I), m.journal("slirpd.service")
    # The same connection: slirpd answers it after the reload.
    guest.ping_dns(2, timeout=20)
    assert guest.dhcp_lease(timeout=20) == guest.ip
    assert MAC in m.check("slirpctl --control /run/slirpd/control.sock guests")


def test_watchdog_restarts_a_hung_daemon(installed):
    m = installed
    if m.show("slirpd.service", "ActiveState") != "active":  # run alone, or after a failure
        m.check("systemctl start slirpd.socket slirpd.service")
        Attached.guest = None
    old = int(m.show("slirpd.service", "MainPID"))
    assert old > 0, "slirpd.service is not running"
    restarts = int(m.show("slirpd.service", "NRestarts"))
    m.check(f"kill -STOP {old}")
    stopped = time.monotonic()
    # systemd aborts it WatchdogSec after its last ping (so within WatchdogSec of the stop),
    # and starts it again RestartSec later; slirpd then needs a moment to be ready.
    limit = WATCHDOG_SEC + RESTART_SEC + 30
    new = old
    while True:
        state = m.show("slirpd.service", "ActiveState")
        pid = int(m.show("slirpd.service", "MainPID"))
        if pid not in (0, old) and state == "active":
            new = pid
            break
        assert time.monotonic() - stopped < limit, \
            f"slirpd was not restarted within {limit} s of SIGSTOP ({state}, pid {pid}):\n{m.journal('slirpd.service')[-3000:]}"
        time.sleep(0.3)
    took = time.monotonic() - stopped
    print(f"watchdog: new slirpd {took:.1f} s after SIGSTOP (WatchdogSec={WATCHDOG_SEC}, RestartSec={RESTART_SEC})")
    assert took >= RESTART_SEC, f"restarted after {took:.1f} s, sooner than RestartSec: not the watchdog"
    assert "Watchdog timeout" in m.journal("slirpd.service"), m.journal("slirpd.service")[-3000:]
    assert int(m.show("slirpd.service", "NRestarts")) == restarts + 1
    assert m.run(f"kill -0 {old}").returncode != 0, "the hung slirpd is still there"
    # The stream guest lost its connection with the old process; a new guest attaches
    # through the same listening socket, held by systemd across the restart.
    old_guest = Attached.guest
    if old_guest is not None:
        with pytest.raises((ConnectionError, OSError)):
            while old_guest.recv_frame(10) is not None:
                pass
            raise AssertionError("the old guest's connection is still open after the restart")
        old_guest.close()
    _, gid = slirpd_ids(m)
    guest = FakeGuest.on_socket(m.connect_as("/run/slirpd/default.sock", 4242, 4242, [gid]), fake_mac(2))
    Attached.guest = guest
    guest.dhcp_lease(timeout=30)
    guest.ping_dns(1, timeout=20)


def test_stop_cleans_up(installed):
    m = installed
    if m.show("slirpd.service", "ActiveState") != "active":
        m.check("systemctl start slirpd.socket slirpd.service")
    guest = Attached.guest
    if guest is None:  # run alone: a guest to see leave
        _, gid = slirpd_ids(m)
        guest = FakeGuest.on_socket(m.connect_as("/run/slirpd/default.sock", 4242, 4242, [gid]), fake_mac(4))
        guest.dhcp_lease(timeout=60)
    deadline = time.monotonic() + 20
    while guest.mac not in m.run("cat /var/lib/slirpd/default.leases").stdout:
        assert time.monotonic() < deadline, "no lease file in /var/lib/slirpd: " + m.check("ls -la /var/lib/slirpd")
        time.sleep(0.5)
    m.check("systemctl stop slirpd.socket slirpd.service", timeout=120)
    for unit in ("slirpd.service", "slirpd.socket"):
        assert m.show(unit, "ActiveState") == "inactive", m.check(f"systemctl status --no-pager {unit} || true")
        assert m.show(unit, "Result") == "success", m.check(f"systemctl status --no-pager {unit} || true")
    assert m.run("pgrep -u slirpd").stdout == "", m.check("ps -ef")
    assert m.run("pgrep -x slirpd").stdout == "", m.check("ps -ef")
    files = m.check("ls -A /run/slirpd").split()
    # RemoveOnStop=yes takes the socket files away, slirpd its control socket;
    # RuntimeDirectoryPreserve=yes keeps the directory (and tmpfiles.d's guests/ in it),
    # StateDirectory= the leases.
    assert files == ["guests"], f"left in /run/slirpd: {files}"
    assert guest.mac in m.check("cat /var/lib/slirpd/default.leases")
    with pytest.raises((ConnectionError, OSError)):
        while guest.recv_frame(10) is not None:
            pass
        raise AssertionError("the guest's connection is still open after stop")
    guest.close()
    Attached.guest = None
    # Started again, it serves as before: nothing it needs was taken away.
    m.check("systemctl start slirpd.socket")
    _, gid = slirpd_ids(m)
    with FakeGuest.on_socket(m.connect_as("/run/slirpd/default.sock", 4242, 4242, [gid]), fake_mac(3)) as g:
        g.dhcp_lease(timeout=60)
    m.check("systemctl stop slirpd.socket slirpd.service", timeout=120)
    assert m.run("pgrep -x slirpd").stdout == ""


def test_an_instance_beside_the_default_network(installed):
    """slirpd@lab runs its own network next to slirpd.service, sharing /run/slirpd;
    stopping it leaves the default network and its guest alone."""
    m = installed
    m.check("""cat > /etc/slirpd/lab.toml <<'END'
[[network]]
name = "lab"
options = "net=10.0.3.0/24"
stream = ["/run/slirpd/lab.sock"]
dgram = ["/run/slirpd/lab.dgram"]
socket-group = "slirpd"
socket-mode = "0660"
END
systemctl start slirpd.socket slirpd@lab.socket""")
    _, gid = slirpd_ids(m)
    default = FakeGuest.on_socket(m.connect_as("/run/slirpd/default.sock", 4242, 4242, [gid]), fake_mac(10))
    lab = FakeGuest.on_socket(m.connect_as("/run/slirpd/lab.sock", 4243, 4243, [gid]), fake_mac(11))
    try:
        assert default.dhcp_lease(timeout=60).startswith("10.0.2.")
        assert lab.dhcp_lease(timeout=60).startswith("10.0.3.")
        pids = {m.show(u, "MainPID") for u in ("slirpd.service", "slirpd@lab.service")}
        assert len(pids) == 2 and "0" not in pids, pids
        assert fake_mac(11) in m.check("slirpctl --control /run/slirpd/lab.control leases")
        assert fake_mac(11) not in m.check("slirpctl --control /run/slirpd/control.sock leases")
        assert m.check("stat -c '%U %G %a' /var/lib/slirpd/lab").strip() == "slirpd slirpd 700"
        deadline = time.monotonic() + 20
        while fake_mac(11) not in m.run("cat /var/lib/slirpd/lab/lab.leases").stdout:
            assert time.monotonic() < deadline, "no lease file: " + m.check("ls -laR /var/lib/slirpd")
            time.sleep(0.5)

        m.check("systemctl stop slirpd@lab.socket slirpd@lab.service", timeout=120)
        assert m.show("slirpd@lab.service", "Result") == "success"
        left = m.check("ls -A /run/slirpd").split()
        assert sorted(left) == ["control.sock", "default.dgram", "default.sock", "guests"], left
        with pytest.raises((ConnectionError, OSError)):
            while lab.recv_frame(10) is not None:
                pass
            raise AssertionError("the lab guest's connection is still open after stop")
        default.ping_dns(2, timeout=20)
        assert m.show("slirpd.service", "ActiveState") == "active"
    finally:
        default.close()
        lab.close()
        m.run("systemctl stop slirpd.socket slirpd.service slirpd@lab.socket slirpd@lab.service", timeout=120)
    assert m.run("pgrep -x slirpd").stdout == "", m.check("ps -ef")


def test_a_group_members_datagram_guest_lives_through_a_restart(installed):
    """A member of group slirpd puts a datagram guest's socket in /run/slirpd/guests (the
    only place both it may create and slirpd may reach), under umask 007 as the tmpfiles.d
    snippet says; it leases through slirpd.socket's datagram socket and, that socket being
    systemd's, keeps working across systemctl restart. A user outside the group may not
    put a socket there."""
    m = installed
    m.check("systemctl start slirpd.socket")
    _, gid = slirpd_ids(m)
    with pytest.raises(PermissionError):
        m.dgram_as("/run/slirpd/guests/outsider.sock", 4243, 4243, [], 0o007)
    sock = m.dgram_as("/run/slirpd/guests/vm1.sock", 4242, 4242, [gid], 0o007)
    # Sent from here, to the same socket file (the stream test checks the group may write it).
    guest = FakeGuest.on_socket(sock, fake_mac(30), remote=f"/proc/{m.leader}/root/run/slirpd/default.dgram")
    try:
        assert m.check("stat -c '%u %G %a' /run/slirpd/guests/vm1.sock").strip() == "4242 slirpd 770"
        address = guest.dhcp_lease(timeout=60)
        pid = m.show("slirpd.service", "MainPID")
        m.check("systemctl restart slirpd.service", timeout=120)
        assert m.show("slirpd.service", "MainPID") not in ("0", pid)
        # The same socket, to systemd's same socket: the new slirpd answers it.
        assert guest.dhcp_lease(timeout=60) == address
        guest.ping_dns(2, timeout=20)
        # Nothing handed over: the guest's socket is still its own.
        assert m.check("stat -c '%u %G' /run/slirpd/guests/vm1.sock").strip() == "4242 slirpd"
    finally:
        guest.close()
        m.run("systemctl stop slirpd.socket slirpd.service", timeout=120)
