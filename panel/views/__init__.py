"""Views of the commune core, by topic."""
