"""CMB detection: networks, weights and inference (issue 4; in progress)."""
