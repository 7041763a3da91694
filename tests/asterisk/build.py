"""Asterisk built from source once for the tests, and cached.

    python -m tests.asterisk.build      # build if missing, print the installed path

Only the modules a dial-in dialplan and the tests use are built, unoptimised, so a cold build
takes minutes instead of the quarter hour a default build takes on two cores. The cache key
is the version, the configure flags and the module selection: changing any of them builds a
fresh copy next to the old one. Everything is installed under that cache directory (its own
prefix), nothing goes to the machine's /usr or /etc.

The source tarball, always checked against the pinned SHA-256, comes from (first found):
``ASTERISK_SOURCE=path``, ``shared/asterisk/`` in a parent directory of the repository or
``/work/shared/asterisk/``, a copy downloaded earlier into the cache, or the official
download site (HTTPS, checked against the ``.sha256`` file published beside it too).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

VERSION = "22.10.1"
SHA256 = "373c98f4d4a1b923b42def0aee03f4e36aca9d1c244a8eeda646da8a97f89663"
TARBALL = f"asterisk-{VERSION}.tar.gz"
URL = f"https://downloads.asterisk.org/pub/telephony/asterisk/releases/{TARBALL}"
# The official tarball is about 30 MB; a server sending far more is not sending it.
MAX_DOWNLOAD = 200 * 1024 * 1024

CONFIGURE_FLAGS = (
    # Bundling these downloads them during the build; Local channels, AGI, AMI and the
    # dialplan need no SIP stack, and Debian has jansson.
    "--without-pjproject-bundled",
    "--with-jansson-bundled=no",
    "--with-libjwt-bundled=no",
    # The XML documentation is only for `core show application`; building it takes time and
    # needs xmlstarlet or xmllint.
    "--disable-xmldoc",
)
MODULES = (
    # Applications of the panel's dialplan and of the harness's simulated network.
    "app_dial",
    "app_echo",
    "app_exec",
    "app_playback",
    "app_read",
    "app_senddtmf",
    "app_stack",  # Gosub, Dial's U(), hangup handlers
    "app_userevent",
    "app_verbose",
    "bridge_builtin_features",
    "bridge_builtin_interval_features",  # Dial's L() limit
    "bridge_simple",
    "cdr_csv",
    "codec_alaw",
    "codec_ulaw",
    "format_pcm",
    "format_wav",
    "func_callerid",
    "func_cdr",
    "func_channel",  # CHANNEL(hangup_handler_push)
    "func_cut",
    "func_db",  # DB(), DB_DELETE(), DB_EXISTS()
    "func_global",  # GLOBAL(), SHARED()
    "func_hangupcause",
    "func_logic",
    "func_math",
    "func_rand",
    "func_strings",  # STRFTIME() among others
    "func_timeout",
    "pbx_config",  # extensions.conf
    "res_agi",
    "res_clioriginate",
    "res_speech",  # res_agi depends on it
    "res_timing_timerfd",  # Playback on Local channels needs a timer
)
# Unoptimised compiles in about half the time, and a test PBX carries a handful of calls.
# COMPILE_DOUBLE comes with DONT_OPTIMIZE by default and would compile everything twice;
# BUILD_NATIVE would tie the cached build to this CPU.
MENUSELECT_CFLAGS_ON = ("DONT_OPTIMIZE", "OPTIONAL_API")
MENUSELECT_CFLAGS_OFF = ("COMPILE_DOUBLE", "BUILD_NATIVE")
# Configuration samples the harness installs into each test PBX's own etc directory.
SAMPLES = ("indications.conf", "features.conf")

REPO = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    """The suite's cache (the test hosts' rootfs lives there too)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "commune-panel"


class BuildError(RuntimeError):
    """The build cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Installation:
    """A finished build: where its program, modules and configuration samples are."""

    root: Path

    @property
    def prefix(self) -> Path:
        return self.root / "install"

    @property
    def asterisk(self) -> Path:
        return self.prefix / "sbin" / "asterisk"

    @property
    def moddir(self) -> Path:
        return self.prefix / "lib" / "asterisk" / "modules"

    @property
    def samples(self) -> Path:
        return self.prefix / "share" / "commune-panel-samples"


def build_key() -> str:
    """The cache key: what changes the installed result."""
    parts = [
        VERSION,
        SHA256,
        " ".join(CONFIGURE_FLAGS),
        ",".join(sorted(MODULES)),
        ",".join(MENUSELECT_CFLAGS_ON),
        ",".join(MENUSELECT_CFLAGS_OFF),
        ",".join(SAMPLES),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def install_path() -> Path:
    return cache_root() / f"asterisk-{VERSION}-{build_key()}"


def _say(message: str) -> None:
    # Progress to stderr: bin/test reads the path from stdout.
    print(f"asterisk build: {message}", file=sys.stderr, flush=True)  # noqa: T201


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_tarball(path: Path) -> Path:
    """The tarball, if it is the pinned release; BuildError otherwise.

    Every source is checked, local ones too: a truncated copy or another release would build
    something the tests were not written against.
    """
    actual = sha256_of(path)
    if actual != SHA256:
        raise BuildError(
            f"{path} is not Asterisk {VERSION}: its SHA-256 is {actual}, expected {SHA256}"
        )
    return path


def shared_candidates(repo: Path = REPO) -> list[Path]:
    """Where a shared copy of the tarball may be, nearest first.

    The repository may be cloned anywhere (a CI checkout in /tmp), so its parents are
    searched and then the machine's /work/shared.
    """
    seen: list[Path] = []
    for parent in [repo, *repo.parents, Path("/work")]:
        candidate = parent / "shared" / "asterisk" / TARBALL
        if candidate not in seen:
            seen.append(candidate)
    return seen


def _fetch(url: str, *, timeout: float, limit: int) -> Iterable[bytes]:
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise BuildError(f"cannot download {url}: {exc}") from None
    with response:
        received = 0
        while True:
            try:
                block = response.read(1 << 16)
            except OSError as exc:
                raise BuildError(f"downloading {url} broke off: {exc}") from None
            if not block:
                return
            received += len(block)
            if received > limit:
                raise BuildError(f"{url} sends more than {limit} bytes; that is not the release")
            yield block


def published_sha256(url: str, *, timeout: float = 30.0) -> str:
    """The checksum the download site publishes beside the tarball (``URL.sha256``)."""
    text = b"".join(_fetch(url + ".sha256", timeout=timeout, limit=4096)).decode(
        "ascii", errors="replace"
    )
    match = re.match(r"\s*([0-9a-fA-F]{64})\b", text)
    if not match:
        raise BuildError(f"{url}.sha256 holds no SHA-256 checksum")
    return match.group(1).lower()


def download(url: str, dest: Path, *, timeout: float = 60.0) -> Path:
    """Download the tarball to dest, checked against the published and the pinned checksum.

    It is written beside dest and renamed only when both checksums match, so a broken
    download never looks like a cached copy.
    """
    published = published_sha256(url, timeout=timeout)
    if published != SHA256:
        raise BuildError(
            f"{url}.sha256 publishes {published}, but the pinned checksum of Asterisk "
            f"{VERSION} is {SHA256}; refusing to build it"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with part.open("wb") as out:
            for block in _fetch(url, timeout=timeout, limit=MAX_DOWNLOAD):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != SHA256:
            raise BuildError(
                f"the file downloaded from {url} has SHA-256 {digest.hexdigest()}, "
                f"not the published {SHA256}"
            )
        part.rename(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def find_source(
    *,
    environ: Mapping[str, str] | None = None,
    candidates: Iterable[Path] | None = None,
    cache_dir: Path | None = None,
    url: str = URL,
    timeout: float = 60.0,
) -> Path:
    """The verified source tarball, from the first place that has one (see the module doc).

    Never a skip: the tests that need Asterisk cannot run without it, and silence would hide
    that. The keyword arguments exist for the tests of this function.
    """
    environ = os.environ if environ is None else environ
    given = environ.get("ASTERISK_SOURCE")
    if given:
        path = Path(given)
        if not path.is_file():
            raise BuildError(f"ASTERISK_SOURCE={given} is not a file")
        return verify_tarball(path)
    for candidate in shared_candidates() if candidates is None else candidates:
        if candidate.is_file():
            return verify_tarball(candidate)
    cached = (cache_root() if cache_dir is None else cache_dir) / TARBALL
    if cached.is_file():
        return verify_tarball(cached)
    _say(f"no local source; downloading {url}")
    try:
        return download(url, cached, timeout=timeout)
    except BuildError as exc:
        raise BuildError(
            f"no Asterisk {VERSION} source found and the download failed ({exc}). Provide "
            f"the tarball (SHA-256 {SHA256}) with ASTERISK_SOURCE=path/{TARBALL}, or put it "
            f"in {cached}"
        ) from None


def _run(args: list[str], *, cwd: Path, log: Path, step: str) -> None:
    _say(step)
    with log.open("a") as out:
        out.write(f"\n### {step}: {' '.join(args)}\n")
        out.flush()
        result = subprocess.run(
            args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise BuildError(
            f"{step} failed (exit {result.returncode}); the last lines of {log}:\n{tail}"
        )


def _menuselect_args() -> list[str]:
    args = ["--disable-all"]
    for module in MODULES:
        args += ["--enable", module]
    for flag in MENUSELECT_CFLAGS_ON:
        args += ["--enable", flag]
    for flag in MENUSELECT_CFLAGS_OFF:
        args += ["--disable", flag]
    return args


def _check_selection(srcdir: Path, log: Path) -> None:
    """Every wanted module is selected, and nothing that downloads at install or compiles twice.

    The module categories of menuselect.makeopts list what is left out (``--list-options``
    cuts long names); the compiler flags and sound categories list what is in.
    """
    lines = (srcdir / "menuselect.makeopts").read_text().splitlines()
    left_out: set[str] = set()
    selected: dict[str, set[str]] = {}
    for line in lines:
        name, _, value = line.partition("=")
        if name == "MENUSELECT_DEPSFAILED":
            left_out.add(value.partition("=")[2].strip())
        elif name.startswith("MENUSELECT_") and name != "MENUSELECT_BUILD_DEPS":
            selected[name] = set(value.split())
            left_out |= selected[name]
    with log.open("a") as out:
        out.write("\n### menuselect.makeopts:\n" + "\n".join(lines) + "\n")
    cflags = selected.get("MENUSELECT_CFLAGS", set())
    missing = [m for m in MODULES if m in left_out]
    missing += [f for f in MENUSELECT_CFLAGS_ON if f not in cflags]
    unwanted = sorted(cflags & set(MENUSELECT_CFLAGS_OFF))
    for category in ("MENUSELECT_CORE_SOUNDS", "MENUSELECT_MOH", "MENUSELECT_EXTRA_SOUNDS"):
        unwanted += sorted(selected.get(category, set()))
    if missing or unwanted:
        raise BuildError(
            f"menuselect did not take the selection: missing {missing}, unwanted {unwanted} "
            f"(see {log})"
        )


def _build(tarball: Path, root: Path) -> None:
    log = root / "build.log"
    prefix = Installation(root).prefix
    src = root / "src"
    src.mkdir(parents=True)
    started = time.monotonic()
    _run(
        ["tar", "xzf", str(tarball), "--no-same-owner", "-C", str(src)],
        cwd=root,
        log=log,
        step="unpack",
    )
    srcdir = src / f"asterisk-{VERSION}"
    _run(
        [
            "./configure",
            f"--prefix={prefix}",
            f"--libdir={prefix / 'lib'}",
            *CONFIGURE_FLAGS,
        ],
        cwd=srcdir,
        log=log,
        step="configure",
    )
    _run(["make", "menuselect.makeopts"], cwd=srcdir, log=log, step="menuselect tree")
    _run(
        ["menuselect/menuselect", *_menuselect_args(), "menuselect.makeopts"],
        cwd=srcdir,
        log=log,
        step="module selection",
    )
    _check_selection(srcdir, log)
    jobs = str(os.cpu_count() or 1)
    _run(["make", f"-j{jobs}"], cwd=srcdir, log=log, step=f"make -j{jobs}")
    # LDCONFIG=: keeps make install (run as root) from adding the prefix's libraries to the
    # machine's linker cache; the binary finds them through its rpath.
    _run(["make", "install", "LDCONFIG=:"], cwd=srcdir, log=log, step="make install")
    built = Installation(root)
    absent = [m for m in MODULES if not (built.moddir / f"{m}.so").exists()]
    if not built.asterisk.exists() or absent:
        raise BuildError(f"make install left no asterisk binary or modules {absent} (see {log})")
    built.samples.mkdir(parents=True, exist_ok=True)
    for name in SAMPLES:
        shutil.copyfile(srcdir / "configs" / "samples" / f"{name}.sample", built.samples / name)
    shutil.rmtree(src)
    seconds = time.monotonic() - started
    _say(f"built in {seconds:.0f} s")
    (root / ".complete").write_text(
        f"asterisk {VERSION}\nbuild seconds {seconds:.0f}\n"
        f"configure {' '.join(CONFIGURE_FLAGS)}\nmodules {' '.join(MODULES)}\n"
    )


def ensure_asterisk() -> Installation:
    """The cached build; built (a few minutes) when missing."""
    target = install_path()
    if (target / ".complete").exists():
        return Installation(target)
    for tool in ("make", "gcc", "pkg-config", "tar"):
        if not shutil.which(tool):
            raise BuildError(f"{tool} is missing (bin/test installs the build dependencies)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (bin/test and a test session may both get here): the others wait
    # for it and take its result.
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return Installation(target)
        tarball = find_source()
        # The prefix is compiled into the binary (its rpath, its default paths), so the
        # build installs in place; without .complete what is there is an interrupted build.
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        _say(f"building Asterisk {VERSION} from {tarball} into {target} (log: build.log)")
        _build(tarball, target)
    return Installation(target)


if __name__ == "__main__":
    try:
        installed = ensure_asterisk()
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(1)
    print(installed.root)  # noqa: T201  (the path, for bin/test)
    sys.exit(0)
