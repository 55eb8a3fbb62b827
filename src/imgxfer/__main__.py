"""``python -m imgxfer``: the command line, as launchers start it
(``accelerate launch -m imgxfer run ...``, ``torchrun -m imgxfer run ...``)."""

from imgxfer.cli import main

main()
