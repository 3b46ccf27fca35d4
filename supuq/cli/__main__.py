"""`python -m supuq.cli ...`, the same as the `supuq` console script."""

from . import app

if __name__ == "__main__":
    app(prog_name="supuq")
