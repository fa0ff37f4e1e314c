"""REST API of the flashing app; see the modules of this package."""
