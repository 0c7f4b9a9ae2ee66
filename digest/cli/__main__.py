"""`python -m digest.cli`: the `digest` command without the console script."""

from . import main

if __name__ == "__main__":
    main()
