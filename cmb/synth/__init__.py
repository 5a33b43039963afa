"""Physics-based synthetic SWI / T2*-GRE cohorts with ground truth (``cmb synth``)."""

from cmb.synth.cohort import SynthError, SynthOptions, synthesize, validate_options

__all__ = ["SynthError", "SynthOptions", "synthesize", "validate_options"]
