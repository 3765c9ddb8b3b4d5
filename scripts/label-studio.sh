#!/usr/bin/env bash
# Label Studio, as a service labelwise talks to over HTTP, in its own virtual environment.
#
#   scripts/label-studio.sh install   create .venv-label-studio and pip install label-studio (once; a stamp file)
#   scripts/label-studio.sh init      build the cached initialised data dir used by the test fixture (once, ~80 s),
#                                     and the datumaro venv the CVAT tests check files with
#   scripts/label-studio.sh datumaro  create .venv-datumaro with datumaro (CVAT's dataset library) only
#   scripts/label-studio.sh start DOCUMENT_ROOT [PORT]
#                                     start your own server on 127.0.0.1 (data in $LS_DATA_DIR, default
#                                     ~/.local/share/labelwise-label-studio; sign up in the browser, copy the token
#                                     from Account & Settings into LABEL_STUDIO_API_KEY)
#
# Label Studio pins its own Django, numpy and opencv versions, so it never goes into .venv: labelwise itself only needs
# an HTTP client. The data dir built by `init` belongs to the TEST server only: its user and token below are fixed
# test credentials for a server bound to 127.0.0.1, never a real account.
set -euo pipefail
cd "$(dirname "$0")/.."

LS_VERSION="${LABEL_STUDIO_VERSION:-1.23.2}"
LS_VENV="${LS_VENV:-.venv-label-studio}"
LS_STAMP="$LS_VENV/.installed-$LS_VERSION"
LS_INIT_DIR="${LS_INIT_DIR:-$LS_VENV/initialised-data}"
PYTHON="${PYTHON:-python3.11}"
DM_VERSION="${DATUMARO_VERSION:-1.13.12}"
DM_VENV="${DM_VENV:-.venv-datumaro}"
DM_STAMP="$DM_VENV/.installed-$DM_VERSION"
TEST_USER="${LABELWISE_TEST_LS_USER:-tester@labelwise.local}"
TEST_PASSWORD="${LABELWISE_TEST_LS_PASSWORD:-labelwise-test-password}"
TEST_TOKEN="${LABELWISE_TEST_LS_TOKEN:-labelwise0test0token0for0loopback0only}"

server_env() {
  # Label Studio's settings also read plain HOST/PORT/USERNAME/PASSWORD/DEBUG: strip them.
  env -u HOST -u PORT -u USERNAME -u PASSWORD -u DEBUG \
    LABEL_STUDIO_BASE_DATA_DIR="$1" \
    LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true LABEL_STUDIO_LATEST_VERSION_CHECK=false SENTRY_DSN= FRONTEND_SENTRY_DSN= \
    LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="${2:-/}" \
    "${@:3}"
}

install() {
  if [ -f "$LS_STAMP" ] && [ -x "$LS_VENV/bin/label-studio" ]; then
    return 0
  fi
  test -x "$LS_VENV/bin/python" || "$PYTHON" -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install --quiet --upgrade pip
  "$LS_VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION"
  touch "$LS_STAMP"
}

# datumaro, the third-party parser the CVAT tests check our files with, gets its own venv too: it needs pillow 12 and
# opencv-python-headless 4, which would clobber the detector's opencv and pillow in .venv.
datumaro() {
  if [ -f "$DM_STAMP" ] && [ -x "$DM_VENV/bin/python" ]; then
    return 0
  fi
  test -x "$DM_VENV/bin/python" || "$PYTHON" -m venv "$DM_VENV"
  "$DM_VENV/bin/python" -m pip install --quiet --upgrade pip
  "$DM_VENV/bin/python" -m pip install --quiet "datumaro==$DM_VERSION"
  touch "$DM_STAMP"
}

init() {
  datumaro
  install
  if [ -f "$LS_INIT_DIR/.initialised" ]; then
    return 0
  fi
  local tmp="$LS_INIT_DIR.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  server_env "$(cd "$tmp" && pwd)" / \
    env LABEL_STUDIO_USERNAME="$TEST_USER" LABEL_STUDIO_PASSWORD="$TEST_PASSWORD" LABEL_STUDIO_USER_TOKEN="$TEST_TOKEN" \
    "$LS_VENV/bin/label-studio" init -q labelwise-test \
      --username "$TEST_USER" --password "$TEST_PASSWORD" --user-token "$TEST_TOKEN" --enable-legacy-api-token \
      >"$tmp/init.log" 2>&1 || { echo "label-studio init failed; see $tmp/init.log" >&2; exit 1; }
  touch "$tmp/.initialised"
  rm -rf "$LS_INIT_DIR"
  mv "$tmp" "$LS_INIT_DIR"
}

case "${1:-install}" in
  install) install ;;
  init) init ;;
  datumaro) datumaro ;;
  start)
    install
    root="${2:?usage: scripts/label-studio.sh start DOCUMENT_ROOT [PORT]}"
    data="${LS_DATA_DIR:-$HOME/.local/share/labelwise-label-studio}"
    mkdir -p "$data"
    server_env "$data" "$(cd "$root" && pwd)" \
      "$LS_VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "${3:-8080}"
    ;;
  *) echo "usage: scripts/label-studio.sh install | init | datumaro | start DOCUMENT_ROOT [PORT]" >&2; exit 2 ;;
esac
