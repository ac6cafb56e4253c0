"""The robot gateway: robots that sopweb did not start enrol, receive their policy, stream their episodes and obey
operators over an authenticated HTTP API (/api/v1/) and a websocket (/ws/robot/).

It sits beside the actors at the top of the layers: it uses fleet (robots, ingestion, commands), learner (policy
versions and their checkpoints) and core.
"""
