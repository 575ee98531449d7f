"""RLAO training: trajectories -> reward-weighted chat examples -> weighted fine-tuning of the meta-agent."""
