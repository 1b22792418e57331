"""The simulated rig: robosuite (MuJoCo) tables with a Panda or a UR5e, an RGB-D camera,
tasks with variations, a scripted expert and ground truth.

Nothing here is imported by ``import kil``; robosuite loads only when a sim is built.
"""
