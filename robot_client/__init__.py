"""The reference robot client: a robot outside sopweb's processes that talks to it only over the robot API.

`sopweb-robot run --url URL` (token from SOPWEB_ROBOT_TOKEN, --token-file or --token) runs a simulated Meta-World
robot: it pulls its assignment, downloads and verifies its checkpoint, runs episodes at the control rate with the
HG-DAgger gate and recording the in-process actors use (fleet/sim/, Django-free), uploads them (buffered on local
disk while sopweb is unreachable), swaps versions only between episodes and obeys pause, take over and abort.

Its own code needs httpx, websockets and numpy; the simulated robot adds MuJoCo and Meta-World. It never imports
Django or sopweb's apps (.importlinter). A robot in another language implements the same protocol: README,
"Connect a robot".
"""
