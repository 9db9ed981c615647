"""The distill stage: losses, trainer and export of the student."""
