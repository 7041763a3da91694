# Shared by bin/demo and bin/test: find Python, install system packages and the virtualenv
# only when missing, so that a second run starts at once.

PYTHON_BIN="${PYTHON:-python3.11}"
VENV="${VENV:-.venv}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "root is needed to run: $* (install sudo or run as root)"
  fi
}

# apt_ensure PACKAGE... : install the Debian packages that are not installed yet.
apt_ensure() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
         && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }
}

# ensure_venv EXTRAS : a virtualenv with the project installed (editable) with EXTRAS
# ("" or "test"); reinstalls only when pyproject.toml changed or the extras are not there yet.
ensure_venv() {
  local extras="$1" stamp want
  command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "$PYTHON_BIN not found; the panel needs Python 3.11 (Debian 12: apt install python3)"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtualenv in $VENV"
    if ! "$PYTHON_BIN" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      apt_ensure python3-venv python3.11-venv
      "$PYTHON_BIN" -m venv "$VENV"
    fi
  fi
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  stamp="$VENV/.panel-installed"
  if [ -f "$stamp" ] && grep -qx "$want ${extras:-base}" "$stamp"; then return 0; fi
  if [ -z "$extras" ] && [ -f "$stamp" ] && grep -q "^$want " "$stamp"; then return 0; fi
  say "installing the panel into $VENV${extras:+ (with $extras extras)}"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip >"$VENV/pip.log" 2>&1 \
    && "$VENV/bin/python" -m pip install --disable-pip-version-check -e ".${extras:+[$extras]}" \
      >>"$VENV/pip.log" 2>&1 \
    || { tail -n 40 "$VENV/pip.log" >&2; die "pip install failed (whole log: $VENV/pip.log)"; }
  echo "$want ${extras:-base}" > "$stamp"
}
