"""Face geometry: alignment templates, crops, masks and paste-back (pure functions)."""
