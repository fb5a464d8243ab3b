"""ppflow inside other libraries' models (today: diffusers)."""
