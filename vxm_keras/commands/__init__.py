"""Entry points of the flat scripts; each module has ``main(argv=None)``."""
