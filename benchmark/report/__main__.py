"""`python -m benchmark.report ...`: see benchmark/report/__init__.py."""
from benchmark.report import main

main()
