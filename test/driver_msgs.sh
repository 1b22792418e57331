# Sourced by scripts/test.sh after scripts/ros_env.sh: the rig drivers' interface packages
# that kil's graphs talk to but the ROS 2 found lacks (quest2ros for the Quest teleop,
# franka_msgs for the Franka gripper's action goals; a robot PC has them from the drivers'
# workspaces). Each is generated from the definitions kil keeps, which name their source
# (src/kil/converters/msgdefs/<package>), and built once with colcon into
# .cache/driver_msgs (rebuilt when those files change), so the nodes that use them run over
# DDS with the drivers' own message types in the tests.

kil_driver_msgs() {
    local root="$1" defs="$1/src/kil/converters/msgdefs" ws="$1/.cache/driver_msgs" pkg missing=()
    for pkg in $(ls "$defs"); do
        python -c "import $pkg.msg" 2>/dev/null || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    local stamp
    stamp="$(cd "$defs" && find "${missing[@]}" -type f | sort | xargs cat | sha256sum | cut -c1-16)"
    if [ "$(cat "$ws/.stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$ws" && mkdir -p "$ws/src"
        for pkg in "${missing[@]}"; do
            mkdir -p "$ws/src/$pkg" && cp -r "$defs/$pkg/." "$ws/src/$pkg/"
            local files
            files="$(cd "$ws/src/$pkg" && find msg action -type f 2>/dev/null | sort | sed 's/^/"/; s/$/"/' | tr '\n' ' ')"
            cat > "$ws/src/$pkg/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.8)
project($pkg)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(action_msgs REQUIRED)
rosidl_generate_interfaces(\${PROJECT_NAME} $files DEPENDENCIES action_msgs)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
EOF
            cat > "$ws/src/$pkg/package.xml" <<EOF
<?xml version="1.0"?>
<package format="3">
  <name>$pkg</name>
  <version>0.0.0</version>
  <description>$pkg messages for kil's tests, from the definitions in kil/converters/msgdefs/$pkg</description>
  <maintainer email="kil@example.org">kil developers</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>action_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
EOF
        done
        echo "[driver_msgs] building ${missing[*]} into .cache/driver_msgs" >&2
        if ! (cd "$ws" && colcon build >"$ws/build.log" 2>&1); then
            echo "[driver_msgs] warning: build failed (see $ws/build.log); nodes using ${missing[*]} cannot start" >&2
            return 0
        fi
        echo "$stamp" > "$ws/.stamp"
    fi
    # shellcheck disable=SC1091
    source "$ws/install/local_setup.bash"
}

if [ -n "${KIL_ROS:-}" ]; then
    kil_saved_options="$(set +o)"  # a sourcing script's -e / -u must not trip on colcon's setup scripts
    set +eu
    kil_driver_msgs "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    eval "$kil_saved_options"
    unset kil_saved_options
fi
