"""One setup for `pip install -e .[extras]` and colcon's ament_python build.

colcon installs launch/ and config/ into share/kil (data_files below); pip ignores those
paths for editable installs, where the CLI finds them beside the source tree instead.
"""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "kil"
ROOT = Path(__file__).resolve().parent


def share_tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries that mirror `folder` below share/kil, one entry per directory."""
    entries: dict[str, list[str]] = {}
    for path in sorted((ROOT / folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(ROOT)
            entries.setdefault(f"share/{PACKAGE}/{rel.parent.as_posix()}", []).append(rel.as_posix())
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    description="Keypoint imitation learning as a ROS 2 node graph for live robot control",
    python_requires=">=3.10,<3.13",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={PACKAGE: ["converters/msgdefs/*/msg/*.msg", "converters/msgdefs/*/action/*.action", "annotate/static/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_tree("launch"),
        *share_tree("config"),
    ],
    install_requires=[
        "numpy>=1.23",
        "scipy>=1.10",  # rotations in the safety filter, interpolator and teleop nodes
        "pyyaml>=6",
        "rosbags>=0.10.11",
        "mcap>=1.1",
        "pillow>=9",
        "rich>=13",
        "tqdm>=4.64",
    ],
    extras_require={
        # Feature backends and learning: transformers (DINOv2/v3, RADIO, SAM), diffusers
        # (DIFT), OpenCV (dense SIFT), torch with safetensors checkpoints.
        # zarr (training store), tensorboard (training logs), pyarrow (LeRobot export). zarr 3 and
        # pyarrow >= 22 need numpy 2, which the simulator's dependencies do not accept yet.
        "models": ["torch", "safetensors", "transformers>=5.0", "diffusers>=0.35", "opencv-python>=4.8",
                   "zarr>=2.18,<3", "tensorboard>=2.15", "pyarrow>=14,<22"],
        # coverage>=7: numba (robosuite's) fails to import beside an older coverage, e.g.
        # Debian's python3-coverage 6.5 seen by a venv made with --system-site-packages.
        "sim": ["robosuite==1.5.2", "mujoco==3.3.7", "h5py", "coverage>=7"],
        # What ROS 2's Python packages (launch, ros2cli, rosidl) import and a ROS install
        # leaves to the system Python, so a venv without --system-site-packages runs them too;
        # and colcon, to build kil's workspace with the venv's python (kil_node then finds
        # torch). colcon-core keeps setuptools < 80, whose `develop` still takes the
        # --editable that `colcon build --symlink-install` passes.
        "ros": ["lark", "empy<4", "psutil", "packaging", "catkin_pkg", "argcomplete", "colcon-common-extensions"],
        # playwright drives the Debian chromium (no browser download) in the annotation test;
        # mcap-ros2-support writes real-rig-like bags independently of kil and rosbags.
        "dev": ["pytest>=7.4", "hypothesis>=6.80", "playwright>=1.45", "mcap-ros2-support>=0.5"],
    },
    entry_points={
        "console_scripts": [
            "kil = kil.cli:main",
            # The generic ROS 2 shell: one process per graph node (launch/ starts them).
            "kil_node = kil.runtimes.ros2.node:main",
        ],
    },
    zip_safe=False,
)
