"""Engine: features (token cache), metrics, evaluation, calibration and training loops."""
