"""profile_bff service."""
