"""Record a demonstration episode on a rig with `ros2 bag record -s mcap`.

    ros2 launch kil record_demos.launch.py rig:=franka robot_ip:=172.16.0.2 out:=demos/episode_0000

Records the rig's topics (config/rigs/<rig>.yaml, record_topics) into one rosbag2 MCAP
episode that `kil build-dataset` reads like an episode recorded in the sim.
"""


from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from kil.rigs import load_rig
from kil.runtimes.ros2.launch import declare_rig_arguments, rig_actions


def record_actions(context) -> list:
    rig = load_rig(LaunchConfiguration("rig").perform(context))
    out = LaunchConfiguration("out").perform(context)
    return [ExecuteProcess(cmd=["ros2", "bag", "record", "-s", "mcap", "-o", out, *rig.record_topics], output="screen")]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            *declare_rig_arguments(),
            DeclareLaunchArgument("out", description="episode directory to create (must not exist)"),
            OpaqueFunction(function=rig_actions),
            OpaqueFunction(function=record_actions),
        ]
    )
