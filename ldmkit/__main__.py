"""`python -m ldmkit ...` (and `torchrun ... -m ldmkit train ...`): the ldmkit command."""

from .apps.cli import main

if __name__ == "__main__":
    main()
