"""Learning-state post-processing: emotion probabilities -> learning emotions, VAD, readiness, trajectory."""
