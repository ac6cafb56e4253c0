"""The actor layer: Celery workers on the `actors` queue that run robots' episodes in simulation.

It sits above every app (it legitimately uses fleet, learner and governance): it claims evaluation work, loads the
assigned policy, runs the Django-free simulation (fleet/sim/) and ingests the episode.
"""
