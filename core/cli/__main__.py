"""`python -m core.cli`: how `pneumoscan up` starts its children."""

from core.cli import main

main()
