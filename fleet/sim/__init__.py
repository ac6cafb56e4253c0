"""Django-free simulation of robots: Meta-World environments, scripted experts, the HG-DAgger gate, the episode
recorder, the actor loop and the replay renderer. Nothing here imports Django, so it runs in benchmarks and on
robot hosts alike."""
import os
from pathlib import Path

# MuJoCo picks its OpenGL backend once, when it is first imported, from MUJOCO_GL: every simulation import goes
# through this package, so the default is set here. Offscreen replay rendering needs EGL on a GPU host and
# OSMesa (Debian's libosmesa6, software rendering) elsewhere; an explicit MUJOCO_GL always wins.
os.environ.setdefault("MUJOCO_GL", "egl" if Path("/dev/nvidiactl").exists() else "osmesa")
