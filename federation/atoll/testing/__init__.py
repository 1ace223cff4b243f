"""Test helpers shipped with the package: launchers for real servers, fakes for unit tests."""
