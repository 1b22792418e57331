"""Stages: the logic of each node, one module per node named after it (no ROS imports).

A graph description's ``stage: <name>`` refers to module ``kil.stages.<name>``, whose
``STAGE`` attribute is the class (see `kil.stage`).
"""
