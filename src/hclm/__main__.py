"""Run the ``hclm`` command as ``python -m hclm``, which is how ``torchrun -m hclm`` starts it."""

from hclm.cli import main

main()
