"""Django-free simulation of robots: Meta-World environments, scripted experts, the HG-DAgger gate, the episode
recorder and the actor loop. Nothing here imports Django, so it runs in benchmarks and on robot hosts alike."""
