"""``python -m imgxfer``: the command line, as launchers start it
(``accelerate launch -m imgxfer run ...``, ``torchrun -m imgxfer run ...``)."""

from imgxfer.cli.app import main

# Guarded: DataLoader workers start from a fork server that imports the main module
# again (as __mp_main__), and must not run the command a second time.
if __name__ == "__main__":
    main()
