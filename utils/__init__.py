"""Library code shared by every stage. Importing it has no side effects."""
