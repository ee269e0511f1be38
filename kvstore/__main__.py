"""``python -m kvstore``: the `kvstore` command line."""

from ._cli import main

if __name__ == "__main__":
    main()
