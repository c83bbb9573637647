"""The benchmark suite: every measurement runs side by side with its baseline in the same run.

Run it with ``python manage.py benchmark`` (or ``make bench``); results go to BENCHMARKS.md by hand,
with the command that produced them.
"""
