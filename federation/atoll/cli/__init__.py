"""The ``atoll`` command line (Typer + Rich). Entry point: :data:`atoll.cli.main.app`."""
