"""Small shared utilities (images, files)."""
