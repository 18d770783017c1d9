"""Op tests, one file per op, over the backends built, the devices present and the dtypes (cases.py)."""
