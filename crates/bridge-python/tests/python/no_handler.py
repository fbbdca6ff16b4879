"""A module without `handle`, for the load error tests."""

handler = None
