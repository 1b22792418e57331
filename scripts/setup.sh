#!/usr/bin/env bash
# Set up kil in .venv on a fresh machine (Debian 12, Python 3.10-3.12, no ROS, no GPU).
# Idempotent: a second run with unchanged setup.py / constraints.txt does nothing.
#   scripts/setup.sh [EXTRAS]      EXTRAS defaults to sim,models,dev,ros
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-sim,models,dev,ros}"
python="${PYTHON:-python3}"
venv=.venv

# Debian packages (installed only where missing). The sim extra needs an OpenGL library
# for MuJoCo's offscreen renderer (EGL, OSMesa as fallback); the dev extra brings Chromium,
# in which the annotation page is tested. (The ros extra brings colcon from PyPI; a ROS 2's
# own Debian packages are installed by scripts/ros_env.sh.)
apt_packages=()
case ",$extras," in
    *,sim,*) apt_packages+=(libegl1 libgl1-mesa-dri libosmesa6) ;;
esac
case ",$extras," in
    *,dev,*) apt_packages+=(chromium) ;;
esac
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    echo "[setup] apt-get install ${missing[*]}"
    if ! { $sudo_cmd apt-get update -qq && $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
        echo "[setup] warning: could not install ${missing[*]}; the tests that need them will be skipped" >&2
    fi
fi

if ! "$python" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
    echo "[setup] kil needs Python 3.10-3.12; $("$python" --version 2>&1) found (set PYTHON=...)" >&2
    exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"

# Every later pip call in this venv honours constraints.txt (torch stays at 2.13.0).
printf '[global]\nconstraint = %s\n' "$PWD/constraints.txt" > "$venv/pip.conf"

stamp="$(cat setup.py constraints.txt | sha256sum | cut -c1-16) $extras"
if [ -f "$venv/.kil-setup" ] && [ "$(cat "$venv/.kil-setup")" = "$stamp" ]; then
    echo "[setup] .venv is up to date ($extras)"
    exit 0
fi
echo "[setup] installing torch==2.13.0 and kil[$extras] into $venv"
quiet_pip() {  # this machine's global pip.conf names local indexes pip warns about per package
    # pip's own status decides (a filter in a pipe would hide a failed install, e.g. a full disk).
    local output status=0
    output="$("$venv/bin/pip" install --progress-bar off -q "$@" 2>&1)" || status=$?
    printf '%s\n' "$output" | grep -v "is ignored: it is neither a file nor a directory" || true
    if [ "$status" -ne 0 ]; then
        echo "[setup] pip install $* failed (exit $status); .venv is incomplete" >&2
        return "$status"
    fi
}
rm -f "$venv/.kil-setup"  # written back only once every install below has succeeded
quiet_pip "torch==2.13.0"
quiet_pip -e ".[$extras]"
echo "$stamp" > "$venv/.kil-setup"
echo "[setup] done: $("$venv/bin/kil" --version)"
