#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root): system packages, then a virtualenv
# in .venv with this project and its test tools installed. Safe to run again.
# --test also installs the system packages only the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

lists=(scripts/apt-packages.txt)
[ "${1:-}" = "--test" ] && lists+=(scripts/apt-packages-test.txt)
mapfile -t PACKAGES < <(cat "${lists[@]}" | grep -v '^#' | tr ' ' '\n' | grep -v '^$')
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages (${missing[*]}); run as root" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # The tests start their own FreeRADIUS and PostgreSQL, and `tunnel server up` its own
  # keepalived: the packaged services, started by the install, must not stay running or enabled.
  for svc in freeradius postgresql keepalived; do
    if [[ " ${missing[*]} " == *" $svc "* ]]; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# pip's build backend is chatty (editable-install notices): keep its output for failures only.
if ! .venv/bin/python -m pip install -q -e '.[test,server]' > .venv/pip-install.log 2>&1; then
  cat .venv/pip-install.log >&2
  exit 1
fi

# The systemd units run /usr/local/bin/tunnel.
if [ "$(id -u)" -eq 0 ] && [ ! -e /usr/local/bin/tunnel ]; then
  ln -sfn "$PWD/.venv/bin/tunnel" /usr/local/bin/tunnel   # -f: replaces a dangling link
fi
