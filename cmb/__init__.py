"""cmb: cohort-scale cerebral microbleed detection."""

__version__ = "0.1.0"
