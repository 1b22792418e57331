# Source this (bash) after scripts/setup.sh: ROS 2 for kil's venv, as on a robot PC.
#
#   source scripts/ros_env.sh        # then: ros2 launch kil ..., kil bench live --runtime ros2, pytest -m ros
#
# 1. Finds a ROS 2: the one already sourced (ROS_DISTRO and AMENT_PREFIX_PATH set), else
#    /opt/ros/<distro>, else the Jazzy build in ../shared/ros2/ (this project's development
#    machines), extracted once into .cache/ros2/ with its Debian runtime packages installed.
#    None found, or one built for another Python than the venv's: KIL_ROS is left empty and
#    the `ros` tests skip, saying why.
# 2. Sources it and kil's colcon workspace (`colcon build --symlink-install` by the venv's
#    colcon, so kil_node and the launch files run on the venv's python and find torch);
#    .venv/bin/ros2 runs the ROS CLI on the venv's python too (`ros2 launch kil ...` imports kil).
# 3. DDS stays on this machine: CycloneDDS on loopback (config/dds/cyclonedds_loopback.xml,
#    unless CYCLONEDDS_URI is set), and a ROS domain of its own per shell (ROS_DOMAIN_ID,
#    unless set).
# Needs scripts/setup.sh's .venv with the `ros` extra (scripts/test.sh installs it when this
# finds a ROS 2).

kil_saved_options="$(set +o)"  # restored at the end: a sourcing script's -e / -u must not trip on ROS's scripts
set +eu
kil_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIL_ROS=""
KIL_ROS_SKIP=""

kil_find_ros() {  # prints the setup.bash to source ("" when already sourced); non-zero when none
    if [ -n "${ROS_DISTRO:-}" ] && [ -n "${AMENT_PREFIX_PATH:-}" ]; then
        echo ""
        return 0
    fi
    local distro
    for distro in jazzy humble "$(ls /opt/ros 2>/dev/null | tail -n 1)"; do
        if [ -n "$distro" ] && [ -f "/opt/ros/$distro/setup.bash" ]; then
            echo "/opt/ros/$distro/setup.bash"
            return 0
        fi
    done
    local shared="$kil_root/../shared/ros2"
    local archive="$shared/ros2-jazzy-bookworm-amd64.tar.xz"
    [ -f "$archive" ] || return 1
    local cache="$kil_root/.cache/ros2"
    local stamp
    stamp="$(sha256sum "$archive" | cut -c1-16)"
    if [ "$(cat "$cache/.stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "[ros_env] extracting $(basename "$archive") into .cache/ros2" >&2
        rm -rf "$cache" && mkdir -p "$cache" && tar -C "$cache" -xJf "$archive" && echo "$stamp" > "$cache/.stamp" || return 1
    fi
    local missing=() pkg
    while read -r pkg; do
        [ -n "$pkg" ] && ! dpkg -s "$pkg" >/dev/null 2>&1 && missing+=("$pkg")
    done < "$shared/runtime-packages.txt"
    if [ "${#missing[@]}" -gt 0 ]; then
        local sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        echo "[ros_env] apt-get install ${missing[*]} (the ROS 2 build's runtime packages)" >&2
        { $sudo_cmd apt-get update -qq && $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
            || echo "[ros_env] warning: could not install ${missing[*]}" >&2
    fi
    echo "$cache/ros2-jazzy/setup.bash"
}

if ! kil_ros_setup="$(kil_find_ros)"; then
    KIL_ROS_SKIP="no ROS 2 found (none sourced, no /opt/ros/<distro>, no ../shared/ros2)"
else
    if [ -n "$kil_ros_setup" ]; then
        # shellcheck disable=SC1090
        source "$kil_ros_setup"
    fi
    kil_ros_python="$(ls -d "${AMENT_PREFIX_PATH%%:*}"/lib/python3.* 2>/dev/null | head -n 1)"
    kil_venv_python="$("$kil_root/.venv/bin/python" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null)"
    if [ -n "$kil_ros_python" ] && [ "$(basename "$kil_ros_python")" != "$kil_venv_python" ]; then
        KIL_ROS_SKIP="ROS 2 $ROS_DISTRO is built for $(basename "$kil_ros_python"), .venv has ${kil_venv_python:-no python} (set PYTHON=... for scripts/setup.sh)"
    elif ! "$kil_root/.venv/bin/python" -c "import colcon_core, lark" 2>/dev/null; then
        KIL_ROS_SKIP=".venv lacks the ros extra (bash scripts/setup.sh sim,models,dev,ros)"
    else
        KIL_ROS="$ROS_DISTRO"
        # shellcheck disable=SC1091
        source "$kil_root/.venv/bin/activate"
        printf '#!/bin/sh\n# The ROS 2 CLI on the venv python (written by scripts/ros_env.sh): launch files import kil.\nIFS=:\nfor prefix in $AMENT_PREFIX_PATH; do\n    [ -x "$prefix/bin/ros2" ] && exec "%s" "$prefix/bin/ros2" "$@"\ndone\necho "ros2: no ROS 2 sourced (AMENT_PREFIX_PATH has no bin/ros2)" >&2\nexit 127\n' \
            "$kil_root/.venv/bin/python" > "$kil_root/.venv/bin/ros2"
        chmod +x "$kil_root/.venv/bin/ros2"
        mkdir -p "$kil_root/.cache"
        if ! (cd "$kil_root" && colcon build --symlink-install >"$kil_root/.cache/colcon_build.log" 2>&1); then
            KIL_ROS=""
            KIL_ROS_SKIP="colcon build failed (see .cache/colcon_build.log)"
        else
            # shellcheck disable=SC1091
            source "$kil_root/install/setup.bash"
        fi
    fi
    export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_cyclonedds_cpp}"
    export CYCLONEDDS_URI="${CYCLONEDDS_URI:-file://$kil_root/config/dds/cyclonedds_loopback.xml}"
    export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
    export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( RANDOM % 100 + 100 ))}"
fi
export KIL_ROS KIL_ROS_SKIP
if [ -n "$KIL_ROS" ]; then
    echo "[ros_env] ROS 2 $KIL_ROS (domain $ROS_DOMAIN_ID, $RMW_IMPLEMENTATION on loopback)" >&2
else
    echo "[ros_env] ROS 2 not used: $KIL_ROS_SKIP" >&2
fi
unset kil_ros_setup kil_ros_python kil_venv_python
eval "$kil_saved_options"
unset kil_saved_options
