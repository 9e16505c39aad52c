"""Sky model for drift scans: calibrator catalog, primary beam, transit math."""
