"""Database: engine and session handling (session.py), typed models (models.py), migrations."""
