#!/bin/bash
# Environment of the kil image (docker/Dockerfile), installed as /opt/kil/entrypoint.sh.
#   executed (the image's ENTRYPOINT): set the environment up, then run the command given
#   sourced (/etc/bash.bashrc, scripts): only set the environment up
# Order: ROS 2, the kil venv (its python first on PATH; it sees the system site-packages),
# the ZED workspace when the image has one (zed target), the kil workspace /ws, and /ws/test
# on PYTHONPATH (the toy test stages that ROS nodes started by the tests import).
# Sourcing it twice is harmless.

source "/opt/ros/${ROS_DISTRO:?ROS_DISTRO is not set}/setup.bash"
source "${KIL_VENV:-/opt/kil-venv}/bin/activate"
if [ -f /opt/zed_ws/install/local_setup.bash ]; then
    source /opt/zed_ws/install/local_setup.bash
fi
if [ -f /ws/install/local_setup.bash ]; then
    source /ws/install/local_setup.bash
fi
case ":${PYTHONPATH:-}:" in
    *:/ws/test:*) ;;
    *) export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}/ws/test" ;;
esac

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    exec "$@"
fi
