#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the main job on the simulated rig: scripted
# demonstrations of pick_place on the Panda (robosuite/MuJoCo, RGB-D camera, 100 Hz pose
# control), each recorded as a rosbag2 (MCAP) episode with the topics a real rig records;
# then one episode's topics, a contact sheet of its camera, the scene with its true
# keypoints, and the task's reference keypoints found in the episode by the project's
# descriptor net, as PNGs; the training store of the demonstrations (keypoints from the
# descriptor net) and its LeRobot export; a cpu-small keypoint diffusion policy trained on
# it; finally closed-loop episodes of that policy through the live graph (camera, features,
# keypoints, policy, interpolator, safety, rig), each with an MP4, and the success rate.
# About 25 minutes on a 2-core CPU with the defaults. Output: runs/main/<time>/.
# KIL_EPISODES (demonstrations, 30), KIL_STEPS (training steps, 5000) and KIL_EVAL_EPISODES
# (closed-loop episodes, 5) make it shorter or longer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}"
out="runs/main/$(date +%Y%m%d-%H%M%S)"
.venv/bin/kil sim demos --task pick_place --robot panda --variation in --episodes "${KIL_EPISODES:-30}" --seed 0 --out "$out/demos"
.venv/bin/kil bag info "$out/demos/episode_0000"
.venv/bin/kil bag preview "$out/demos/episode_0000" --out "$out/preview.png"
.venv/bin/kil sim render --task pick_place --robot panda --variation in --seed 0 --out "$out/scene_keypoints.png"
.venv/bin/kil keypoints show --episode "$out/demos/episode_0000" --model descriptor_net --out "$out/keypoints.png"
.venv/bin/kil build-dataset "$out/demos" --task pick_place --out "$out/dataset" --lerobot "$out/lerobot"
.venv/bin/kil train --config cpu-small --dataset "$out/dataset" --out "$out/policy" --steps "${KIL_STEPS:-5000}"
.venv/bin/kil eval --rig sim --policy "$out/policy" --variation in --episodes "${KIL_EVAL_EPISODES:-5}" --video "$out/rollouts"
echo "main job done: $out (videos in $out/rollouts, training curve $out/policy/loss.png)"
