"""`python -m cli`: how `pneumoscan up` starts its children."""

from cli import main

main()
