"""``python -m distilnas`` is the ``distilnas`` command."""

from distilnas.search.cli import main

main()
