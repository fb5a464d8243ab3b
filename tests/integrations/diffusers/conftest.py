"""Tiny random diffusers models for the PPFlow hook (FLUX parts from tests/flux)."""


from tests.flux.conftest import _offline, components, flux  # noqa: F401  (fixtures)
