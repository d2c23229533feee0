"""Pure step math: no state, no backend imports."""
