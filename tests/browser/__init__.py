"""Tests in a real browser (Playwright driving Chromium)."""
