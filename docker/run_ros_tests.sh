#!/usr/bin/env bash
# Build the kil image and run the ROS-side tests (pytest -m ros) inside it.
#   bash docker/run_ros_tests.sh                      # ROS 2 Jazzy
#   ROS_DISTRO=humble bash docker/run_ros_tests.sh    # ROS 2 Humble
#   bash docker/run_ros_tests.sh -k launch -x         # extra arguments go to pytest
# Works from any directory; the exit status is pytest's (non-zero on failure).
# Environment: ROS_DISTRO (humble | jazzy, default jazzy), KIL_IMAGE (image tag, default
# kil:$ROS_DISTRO), TORCH_INDEX_URL (passed on as a build arg when set), KIL_SKIP_BUILD=1
# (use the existing image as it is).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
distro="${ROS_DISTRO:-jazzy}"
case "$distro" in
    humble|jazzy) ;;
    *) echo "run_ros_tests.sh: ROS_DISTRO must be humble or jazzy (got '$distro')" >&2; exit 2 ;;
esac
image="${KIL_IMAGE:-kil:${distro}}"

if ! command -v docker >/dev/null 2>&1; then
    echo "run_ros_tests.sh: docker is not installed or not on PATH" >&2
    exit 127
fi

if [ "${KIL_SKIP_BUILD:-0}" != "1" ]; then
    build_args=(--build-arg "ROS_DISTRO=${distro}")
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        build_args+=(--build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL}")
    fi
    echo "[run_ros_tests] building ${image} (ROS 2 ${distro})" >&2
    # BuildKit builds only the stages the robot target needs (not the opt-in zed stage).
    DOCKER_BUILDKIT=1 docker build -f "${repo}/docker/Dockerfile" --target robot -t "${image}" \
        "${build_args[@]}" "${repo}"
fi

tty_args=()
if [ -t 0 ] && [ -t 1 ]; then
    tty_args=(-t)
fi

echo "[run_ros_tests] python -m pytest -m ros test -q $* (in ${image})" >&2
# The entrypoint already sets the environment up; sourcing it again keeps the command
# self-contained. --init reaps the processes `ros2 launch` leaves behind; the default bridge
# network keeps the test's DDS traffic inside the container.
exec docker run --rm --init ${tty_args[@]+"${tty_args[@]}"} --shm-size=1g "${image}" \
    bash -lc 'source /opt/kil/entrypoint.sh && cd /ws && KIL_ROS=$ROS_DISTRO && source test/driver_msgs.sh && exec python -m pytest -m ros test -q "$@"' \
    run_ros_tests "$@"
