#!/usr/bin/env bash
# Set up this checkout on a fresh machine (Debian/Ubuntu, Python >= 3.10).
#   tools/bootstrap.sh run    -> .venv with the daemon and the camera extra (no torch): enough for the demo
#   tools/bootstrap.sh test   -> also the training, archive and plc extras (torch: its CPU build here; asyncua,
#                                pymodbus), dev tools, and the system packages the tests use for real:
#                                promtool (prometheus), systemd-analyze, headless chromium and its
#                                chromedriver (the review page's tests)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-run}"
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
case "$what" in
    run)
        .venv/bin/python -m pip install -q -e '.[camera]'
        ;;
    test)
        .venv/bin/python -m pip install -q -e '.[camera,train,archive,plc,dev]'
        need=()
        command -v promtool >/dev/null || need+=(prometheus)
        command -v systemd-analyze >/dev/null || need+=(systemd)
        command -v chromium >/dev/null || need+=(chromium)
        command -v chromedriver >/dev/null || need+=(chromium-driver)
        if [ "${#need[@]}" -gt 0 ] && [ "$(id -u)" = 0 ]; then
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") \
                >/dev/null || echo "bootstrap: could not install ${need[*]}; tests that need them will skip" >&2
        fi
        ;;
    *)
        echo "usage: tools/bootstrap.sh [run|test]" >&2
        exit 2
        ;;
esac
