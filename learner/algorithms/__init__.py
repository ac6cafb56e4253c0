"""Training algorithms as plug-ins: each module exposes `batch_loss(policy, batch) -> (loss, metrics)`."""
