"""Fakes and helpers shared by the unit, integration and e2e tests (no test lives here)."""
