"""`python -m rtk ...`, which torchrun needs: `torchrun --nproc_per_node=2 -m rtk train ...`."""

from rtk.cli import main

main(prog_name="rtk")
