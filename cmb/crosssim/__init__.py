"""A second, independent simulator for cross-simulator validation (``cmb crosssim``).

Training only ever sees ``cmb synth``; this package shares nothing with it (no template,
no k-space field, no regular sub-voxel grid), so a detector's accuracy on its cohorts
measures what it learnt about microbleeds rather than about one simulator.
"""

from cmb.crosssim.cohort import CrossSimError, CrossSimOptions, generate, validate_options

__all__ = ["CrossSimError", "CrossSimOptions", "generate", "validate_options"]
