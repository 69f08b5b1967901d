"""The toy world and the research code around it (not part of the pack users run): the world
the embedded toy models are trained on, and the full fine-tuning ablation."""
