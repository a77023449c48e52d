"""Models, losses, optimisers, the trainer, checkpoints, ddp, the fold runner."""
