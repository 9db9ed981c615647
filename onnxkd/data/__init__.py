"""Data sources, the input spec, and replayable augmentation."""
