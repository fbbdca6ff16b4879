"""A module whose import fails, for the load error tests."""

raise ValueError("this module refuses to be imported")
