"""`python -m cli`: the same as the `repolens` command."""

from cli.app import main

main()
