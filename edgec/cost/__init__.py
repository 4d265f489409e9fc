"""Cost models (resources now; cycles and energy arrive with issue 3). Every constant cites a source."""
