"""A module whose `handle` is not a function, for the load error tests."""

handle = 42
