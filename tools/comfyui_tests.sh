#!/usr/bin/env bash
# The real-ComfyUI tests (tests/test_comfy_server.py, tests/test_comfy_browser.py) in one command, as CI runs them:
#
#   bash tools/comfyui_tests.sh VENDOR [pytest options]
#
# VENDOR: a folder holding a ComfyUI source tree (VENDOR/ComfyUI) and setup-comfyui.sh, which makes a runnable CPU
# ComfyUI from it (a writable copy, its own virtual environment, import shims) and prints the variables the tests
# read. Everything is built under .comfyui-test/ in this checkout (nothing outside it); Chromium comes from
# Debian's chromium-headless-shell, installed with apt-get when no browser is found and this runs as root
# (SMITE_NO_INSTALL=1: never install). Run it in the project's environment (its pytest runs the tests; ComfyUI
# runs in its own). SMITE_REQUIRE_COMFYUI=1 is set: a skipped test fails. Screenshots of every template after
# its run go to SMITE_SCREENSHOTS (default .comfyui-test/screenshots). A missing piece is one line, exit 2.
set -euo pipefail
fail() { echo "error: $*" >&2; exit 2; }
VENDOR=${1:-}
[[ -n $VENDOR ]] || fail "usage: tools/comfyui_tests.sh VENDOR [pytest options] (VENDOR: ComfyUI/ and setup-comfyui.sh)"
shift
[[ -d $VENDOR ]] || fail "$VENDOR: no such folder (the ComfyUI source for the real-ComfyUI tests)"
VENDOR=$(CDPATH='' cd -- "$VENDOR" >/dev/null && pwd)
absolute() { [[ $1 == */* && $1 != /* ]] && echo "$PWD/$1" || echo "$1"; }  # relative paths: from the caller's folder
[[ -z ${SMITE_BROWSER:-} ]] || SMITE_BROWSER=$(absolute "$SMITE_BROWSER")
[[ -z ${SMITE_SCREENSHOTS:-} ]] || SMITE_SCREENSHOTS=$(absolute "$SMITE_SCREENSHOTS")
cd "$(dirname "$0")/.."
[[ $PWD != *[[:space:]]* ]] || fail "$PWD: the checkout's path has a space; ComfyUI's setup needs a path without one"
python -c "import pytest, smite_core" 2>/dev/null ||
    fail "python: pytest or smite_core missing; run this in the project's environment (the README's test command)"
[[ -f $VENDOR/ComfyUI/main.py ]] || fail "$VENDOR/ComfyUI/main.py: missing (no ComfyUI source in $VENDOR)"
[[ -f $VENDOR/setup-comfyui.sh ]] || fail "$VENDOR/setup-comfyui.sh: missing (it makes the runnable ComfyUI)"

find_browser() {
    if [[ -n ${SMITE_BROWSER:-} ]]; then command -v "$SMITE_BROWSER" || { [[ -f $SMITE_BROWSER && -x $SMITE_BROWSER ]] && echo "$SMITE_BROWSER"; }
        return 0; fi
    for name in chromium-headless-shell chromium chromium-browser google-chrome chrome; do
        command -v "$name" && return 0
    done
    return 0
}
BROWSER=$(find_browser)
if [[ -z $BROWSER && -z ${SMITE_BROWSER:-} && ${SMITE_NO_INSTALL:-0} != 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "comfyui tests: installing chromium-headless-shell (Debian)"
    mkdir -p .comfyui-test
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell; } \
        >.comfyui-test/apt.log 2>&1 || fail "Chromium: apt-get install chromium-headless-shell failed (see .comfyui-test/apt.log)"
    BROWSER=$(find_browser)
fi
[[ -n $BROWSER ]] || fail "Chromium: ${SMITE_BROWSER:-no Chrome/Chromium} not found; install chromium-headless-shell (Debian) or set SMITE_BROWSER"

WORK=$PWD/.comfyui-test
LOG=$WORK/setup.log
mkdir -p "$WORK"
STAMP=$WORK/.built  # written after a complete build: the vendored ComfyUI's version file and setup script
stamp=$(cat "$VENDOR/ComfyUI/comfyui_version.py" "$VENDOR/setup-comfyui.sh" | sha256sum | cut -d' ' -f1)
if [[ -d $WORK/ComfyUI ]] && [[ $(cat "$STAMP" 2>/dev/null) != "$stamp" ]]; then
    rm -rf "$WORK/ComfyUI" "$WORK/venv"  # an interrupted build, or one of another ComfyUI: build it again
fi
rm -f "$STAMP"
started=$SECONDS
exports=$(bash "$VENDOR/setup-comfyui.sh" "$WORK" python3 2>"$LOG" | grep '^export COMFYUI_PATH=') ||
    fail "$VENDOR/setup-comfyui.sh: could not build ComfyUI in $WORK (see $LOG)"
echo "$stamp" >"$STAMP"
eval "$exports"
# What a user's ComfyUI does for a pack (ComfyUI-Manager, comfy node install): the pack's requirements.txt, and
# requests, which ComfyUI's server imports but its requirements no longer bring in.
"$COMFYUI_PYTHON" -m pip install -q -r requirements.txt requests 2>>"$LOG" >&2 ||
    fail "requirements.txt: could not be installed into ComfyUI's environment (see $LOG)"
export SMITE_REQUIRE_COMFYUI=1 SMITE_BROWSER=$BROWSER
if [[ -z ${SMITE_SCREENSHOTS:-} ]]; then rm -rf "$WORK/screenshots"; fi  # the default folder holds this run's only
export SMITE_SCREENSHOTS=${SMITE_SCREENSHOTS:-$WORK/screenshots}
mkdir -p "$SMITE_SCREENSHOTS"
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFYUI_PATH/comfyui_version.py" 2>/dev/null || true)
echo "comfyui tests: ComfyUI $version ready in $((SECONDS - started)) s; browser $BROWSER ($("$BROWSER" --version 2>/dev/null | head -1))"
python -m pytest -q -m "slow or not slow" tests/test_comfy_server.py tests/test_comfy_browser.py "$@"
echo "comfyui tests: passed against ComfyUI $version; screenshots in $SMITE_SCREENSHOTS"
