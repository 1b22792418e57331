#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the main job on the simulated rig.
# Until the simulator and policy land, the job runs the local graph on a synthetic rig:
# a generated RGB-D camera and robot state, recorded into a rosbag2 (MCAP) episode with the
# topics a real rig records, read back and previewed as a PNG. Output: runs/main/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="runs/main/$(date +%Y%m%d-%H%M%S)"
.venv/bin/kil run --graph synthetic_record --duration 10 --set "recorder.path=$out/episode_0000"
.venv/bin/kil bag info "$out/episode_0000"
.venv/bin/kil bag preview "$out/episode_0000" --out "$out/preview.png"
echo "main job done: $out"
